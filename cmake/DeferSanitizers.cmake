# DEFER_SANITIZE=address gives ASan + UBSan, DEFER_SANITIZE=thread gives TSan. Applied globally so
# that tests, benchmarks and the library agree. The presets that use them build CPU-only: CI has no
# GPU to run device code under a sanitizer, and the CUDA runtime is not instrumented anyway.
if(DEFER_SANITIZE STREQUAL "address")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined> $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
elseif(DEFER_SANITIZE STREQUAL "thread")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread> $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=thread)
elseif(NOT DEFER_SANITIZE STREQUAL "")
  message(FATAL_ERROR "DEFER_SANITIZE must be '', 'address' or 'thread', not '${DEFER_SANITIZE}'")
endif()
