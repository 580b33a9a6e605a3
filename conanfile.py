# SPDX-License-Identifier: MIT
"""Conan 2 recipe for otpkv, a header-only library.

    conan create .                 # builds the package and runs test_package/
    conan install --requires=otpkv/0.1.0 -g CMakeDeps -g CMakeToolchain

Consumers get the CMake package `otpkv` with the target `otpkv::otpkv`, and the
pkg-config name `otpkv`, as with a CMake install.
"""
from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy
from conan.tools.layout import basic_layout


class OtpkvConan(ConanFile):
    name = "otpkv"
    version = "0.1.0"
    description = ("Header-only C++20 fault-tolerant distributed key-value store of "
                   "Elixir's Mix and OTP guide")
    license = "MIT"
    topics = ("key-value", "otp", "supervisor", "concurrency", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = "include/*", "LICENSE"
    no_copy_source = True

    def layout(self):
        basic_layout(self, src_folder=".")

    def package_id(self):
        self.info.clear()

    def validate(self):
        check_min_cppstd(self, 20)
        if self.settings.os == "Windows":
            raise ConanInvalidConfiguration("otpkv needs POSIX")

    def package(self):
        copy(self, "LICENSE", self.source_folder, self.package_folder + "/licenses")
        copy(self, "*.hpp", self.source_folder + "/include", self.package_folder + "/include")

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "otpkv")
        self.cpp_info.set_property("cmake_target_name", "otpkv::otpkv")
        self.cpp_info.set_property("pkg_config_name", "otpkv")
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
