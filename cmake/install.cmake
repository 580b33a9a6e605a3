# SPDX-License-Identifier: MIT
# Install rules: the headers, the exported target, config and version files under
# share/cmake/otpkv (header-only, so architecture-independent), and a relocatable otpkv.pc.
include(CMakePackageConfigHelpers)

set(OTPKV_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/otpkv"
    CACHE STRING "Where otpkv's CMake package files are installed, relative to the prefix")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/otpkv" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS otpkv EXPORT otpkvTargets)
install(EXPORT otpkvTargets NAMESPACE otpkv:: DESTINATION "${OTPKV_INSTALL_CMAKEDIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/otpkvConfig.cmake.in"
    "${PROJECT_BINARY_DIR}/otpkvConfig.cmake"
    INSTALL_DESTINATION "${OTPKV_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/otpkvConfigVersion.cmake"
    COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/otpkvConfig.cmake"
              "${PROJECT_BINARY_DIR}/otpkvConfigVersion.cmake"
        DESTINATION "${OTPKV_INSTALL_CMAKEDIR}")

# The same template serves meson (meson.build), so both install the same otpkv.pc.
set(OTPKV_PC_VERSION "${PROJECT_VERSION}")
set(OTPKV_PC_DESCRIPTION "${PROJECT_DESCRIPTION}")
set(OTPKV_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
configure_file("${PROJECT_SOURCE_DIR}/cmake/otpkv.pc.in" "${PROJECT_BINARY_DIR}/otpkv.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/otpkv.pc" DESTINATION "${CMAKE_INSTALL_DATADIR}/pkgconfig")
