# SPDX-License-Identifier: MIT
# Warning flags for otpkv's own tests, examples and benchmarks, never on otpkv::otpkv
# (style.md 8). Included only when one of those is built. Warnings are errors only with
# OTPKV_WARNINGS_AS_ERRORS (the presets and CI), never by default.
if(NOT TARGET otpkv_warnings)
    add_library(otpkv_warnings INTERFACE)
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
        target_compile_options(otpkv_warnings INTERFACE
            -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
            -Wold-style-cast -Wnon-virtual-dtor)
        if(OTPKV_WARNINGS_AS_ERRORS)
            target_compile_options(otpkv_warnings INTERFACE -Werror)
        endif()
        # GCC 12 at -O2 and above warns inside libstdc++'s inlined string code: -Wrestrict on
        # `"k" + std::to_string(i)` (a false positive, GCC bug 105651, fixed in GCC 13) and
        # -Wmaybe-uninitialized on comparing a string with a literal in a lambda; the tests do
        # both.
        if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
            target_compile_options(otpkv_warnings INTERFACE -Wno-restrict -Wno-maybe-uninitialized)
        endif()
        # Clang checks the `///` comments against the code (\param names and the like).
        if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
            target_compile_options(otpkv_warnings INTERFACE -Wdocumentation)
        endif()
    elseif(MSVC)
        target_compile_options(otpkv_warnings INTERFACE /W4 /permissive-)
        if(OTPKV_WARNINGS_AS_ERRORS)
            target_compile_options(otpkv_warnings INTERFACE /WX)
        endif()
    endif()
endif()
