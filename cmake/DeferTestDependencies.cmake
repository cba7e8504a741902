# GoogleTest and Google Benchmark come from the system (Debian: libgtest-dev, libbenchmark-dev).
if(DEFER_BUILD_TESTS)
  find_package(GTest CONFIG QUIET)
  if(NOT GTest_FOUND)
    message(FATAL_ERROR "defer: GoogleTest not found. Install it (Debian: apt-get install libgtest-dev), "
                        "point CMAKE_PREFIX_PATH at it, or configure with -DDEFER_BUILD_TESTS=OFF.")
  endif()
  include(GoogleTest)
endif()
# defer-bench needs nothing but defer: without Google Benchmark only its suites are left out.
if(DEFER_BUILD_BENCH)
  find_package(benchmark CONFIG QUIET)
  if(NOT benchmark_FOUND)
    message(WARNING "defer: Google Benchmark not found: building defer-bench without the Google Benchmark "
                    "suites (bench_await, bench_ops, bench_fusion). Install it (Debian: apt-get install "
                    "libbenchmark-dev) or point CMAKE_PREFIX_PATH at it to build them.")
  endif()
endif()
