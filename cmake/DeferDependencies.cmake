# What the library itself needs besides CUDA (scripts/install-deps installs all of it):
#   DLPack's header (Debian: libdlpack-dev; 0.6 or newer): included by the public defer/interop.hpp
#   nlohmann-json (Debian: nlohmann-json3-dev): parses safetensors headers; private to the library
find_package(dlpack CONFIG QUIET)
find_path(DEFER_DLPACK_INCLUDE_DIR dlpack/dlpack.h HINTS ${dlpack_DIR}/../../../include)
if(NOT DEFER_DLPACK_INCLUDE_DIR)
  message(FATAL_ERROR "defer: dlpack/dlpack.h not found. Run scripts/install-deps (Debian: apt-get install "
                      "libdlpack-dev) or point CMAKE_PREFIX_PATH at a DLPack installation.")
endif()
find_package(nlohmann_json 3 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "defer: nlohmann-json not found. Run scripts/install-deps (Debian: apt-get install "
                      "nlohmann-json3-dev) or point CMAKE_PREFIX_PATH at it.")
endif()
