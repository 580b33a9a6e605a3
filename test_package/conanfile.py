# SPDX-License-Identifier: MIT
"""Conan's test of the otpkv package: builds and runs a program that parses a command.
Its CMakeLists.txt is also built by ctest against a plain `cmake --install` of otpkv
(tests/cmake/consumer.cmake, kind conan_test_package), since Conan is not on CI."""
import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class OtpkvTestConan(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self):
        if can_run(self):
            self.run(os.path.join(self.cpp.build.bindir, "test_package"), env="conanrun")
