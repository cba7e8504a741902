# Warnings for the project's own targets (not for consumers). A switch over an enum that misses a
# case is an error: the op and dtype tables grow, and every switch must say what a new row does.
set(DEFER_CXX_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wconversion -Wno-sign-conversion
                       -Werror=switch)
function(defer_set_warnings target)
  foreach(flag IN LISTS DEFER_CXX_WARNINGS)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${flag}>)
  endforeach()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror=switch>)
endfunction()
