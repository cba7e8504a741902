# Installs the library, its public headers and a CMake package so that consumers can write
# find_package(defer CONFIG REQUIRED) and link defer::defer.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS defer EXPORT deferTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/defer DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT deferTargets NAMESPACE defer:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/defer)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/deferConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/deferConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/defer)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/deferConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/deferConfig.cmake ${PROJECT_BINARY_DIR}/deferConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/defer)

# The defer-bench command, when the benchmarks are built (DEFER_BUILD_BENCH).
if(TARGET defer-bench)
  install(TARGETS defer-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
