# SPDX-License-Identifier: MIT
# vcpkg overlay port that builds otpkv from the repository it lives in:
#     vcpkg install otpkv --overlay-ports=<path to otpkv>/ports
# (a registry port would fetch a release with vcpkg_from_git instead of this SOURCE_PATH).
# tests/cmake/consumer.cmake runs the same configure options and install, and checks that
# they leave exactly the headers, share/cmake/otpkv and share/pkgconfig/otpkv.pc.
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
set(VCPKG_BUILD_TYPE release) # header-only: one configuration is all there is

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DOTPKV_BUILD_TESTS=OFF
        -DOTPKV_BUILD_EXAMPLES=OFF
        -DOTPKV_BUILD_BENCHMARKS=OFF
        -DOTPKV_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/otpkv)
vcpkg_fixup_pkgconfig()

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
