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

# The same template serves meson (meson.build), so both install the same otpkv.pc. The
# prefix is found from the .pc's own folder, however deep the install put it.
set(_otpkv_pc_dir "${CMAKE_INSTALL_DATADIR}/pkgconfig")
if(IS_ABSOLUTE "${_otpkv_pc_dir}")
    set(OTPKV_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
    file(RELATIVE_PATH _otpkv_up "/root/${_otpkv_pc_dir}" "/root")
    string(REGEX REPLACE "/$" "" _otpkv_up "${_otpkv_up}")
    set(OTPKV_PC_PREFIX "\${pcfiledir}/${_otpkv_up}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
    set(OTPKV_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
    set(OTPKV_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
set(OTPKV_PC_VERSION "${PROJECT_VERSION}")
set(OTPKV_PC_DESCRIPTION "${PROJECT_DESCRIPTION}")
configure_file("${PROJECT_SOURCE_DIR}/cmake/otpkv.pc.in" "${PROJECT_BINARY_DIR}/otpkv.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/otpkv.pc" DESTINATION "${_otpkv_pc_dir}")
