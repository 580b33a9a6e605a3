# SPDX-License-Identifier: MIT
# The version lives in include/otpkv/version.hpp; every packaging file that must carry it
# too has to agree: CMake's project version (read from the header, passed in), meson.build,
# the vcpkg port's vcpkg.json, and the Conan recipe.
#   cmake -DOTPKV_SOURCE_DIR=... -DOTPKV_VERSION=<CMake's PROJECT_VERSION> -P check_versions.cmake

file(READ "${OTPKV_SOURCE_DIR}/include/otpkv/version.hpp" header)
set(parts)
foreach(part IN ITEMS MAJOR MINOR PATCH)
    string(REGEX MATCH "#define OTPKV_VERSION_${part} +([0-9]+)" _ "${header}")
    list(APPEND parts "${CMAKE_MATCH_1}")
endforeach()
string(JOIN "." header_version ${parts})

set(sources
    "meson.build|project\\('otpkv', 'cpp',[ \n]+version: '([^']*)'"
    "ports/otpkv/vcpkg.json|\"version\": \"([^\"]*)\""
    "conanfile.py|version = \"([^\"]*)\"")
set(failures "")
if(NOT OTPKV_VERSION STREQUAL header_version)
    string(APPEND failures "  CMake project: ${OTPKV_VERSION}\n")
endif()
foreach(source IN LISTS sources)
    string(REPLACE "|" ";" source "${source}")
    list(GET source 0 file)
    list(GET source 1 pattern)
    file(READ "${OTPKV_SOURCE_DIR}/${file}" text)
    string(REGEX MATCH "${pattern}" _ "${text}")
    if(NOT CMAKE_MATCH_1 STREQUAL header_version)
        string(APPEND failures "  ${file}: '${CMAKE_MATCH_1}'\n")
    endif()
endforeach()
if(failures)
    message(FATAL_ERROR "version.hpp says ${header_version}, but:\n${failures}")
endif()
message(STATUS "version ${header_version} everywhere: version.hpp, CMake, meson, vcpkg, Conan")
