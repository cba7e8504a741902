# What the library itself needs besides CUDA (scripts/install-deps installs all of it):
#   DLPack's header (Debian: libdlpack-dev; 0.6 or newer): included by the public defer/interop.hpp
#   nlohmann-json (Debian: nlohmann-json3-dev): parses safetensors headers; private to the library
#   SLEEF (Debian: libsleef-dev): the CPU kernels' vectorized f32 math; private to the library
#   OpenBLAS (Debian: libopenblas-dev, the pthreads build): the CPU matmul; private to the library
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

find_path(DEFER_SLEEF_INCLUDE_DIR sleef.h)
find_library(DEFER_SLEEF_LIBRARY sleef)
if(NOT DEFER_SLEEF_INCLUDE_DIR OR NOT DEFER_SLEEF_LIBRARY)
  message(FATAL_ERROR "defer: SLEEF (sleef.h, libsleef) not found. Run scripts/install-deps (Debian: apt-get "
                      "install libsleef-dev) or point CMAKE_PREFIX_PATH at a SLEEF installation.")
endif()
# Debian installs the pthreads build of OpenBLAS under openblas-pthread/ (the openmp and serial
# builds elsewhere): its threads never meet an OpenMP runtime, and defer sizes them itself.
find_path(DEFER_BLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas-pthread openblas)
find_library(DEFER_BLAS_LIBRARY openblas PATH_SUFFIXES openblas-pthread)
if(NOT DEFER_BLAS_INCLUDE_DIR OR NOT DEFER_BLAS_LIBRARY)
  message(FATAL_ERROR "defer: OpenBLAS (cblas.h, libopenblas) not found. Run scripts/install-deps (Debian: "
                      "apt-get install libopenblas-dev) or point CMAKE_PREFIX_PATH at an OpenBLAS installation.")
endif()
