# SPDX-License-Identifier: MIT
# Uses otpkv the way one kind of user does, and checks the outcome:
#   cmake -DKIND=... -DOTPKV_SOURCE_DIR=... -DOTPKV_VERSION=... -DWORK_DIR=...
#         -DGENERATOR=... -DCXX_COMPILER=... [-DMESON=...] -P consumer.cmake
# A consumer project (tests/consumers/KIND) is copied to WORK_DIR/src with main.cpp beside
# it, so that its files say exactly what README.md tells users to write; its `my_app` must
# print what it parsed. Installs use the configure options of the vcpkg port
# (ports/otpkv/portfile.cmake), read from it, so the port's steps are the ones tested.

function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        string(JOIN " " cmdline ${ARGN})
        message(FATAL_ERROR "failed (${rc}): ${cmdline}\n${out}\n${err}")
    endif()
    set(run_output "${out}" PARENT_SCOPE)
endfunction()

# Configures otpkv alone with the port's options (and any further arguments) and installs
# it into `prefix`.
function(install_with_cmake prefix)
    file(READ "${OTPKV_SOURCE_DIR}/ports/otpkv/portfile.cmake" portfile)
    string(REGEX MATCHALL "-DOTPKV_[A-Z_]+=[A-Z]+" port_options "${portfile}")
    if(NOT port_options)
        message(FATAL_ERROR "no -DOTPKV_ options found in the portfile")
    endif()
    file(REMOVE_RECURSE "${WORK_DIR}/otpkv-build")
    run("${CMAKE_COMMAND}" -S "${OTPKV_SOURCE_DIR}" -B "${WORK_DIR}/otpkv-build" ${tools}
        ${port_options} ${ARGN})
    run("${CMAKE_COMMAND}" --install "${WORK_DIR}/otpkv-build" --prefix "${prefix}")
endfunction()

function(vendor_as dir)
    file(MAKE_DIRECTORY "${src}/${dir}")
    file(CREATE_LINK "${OTPKV_SOURCE_DIR}" "${src}/${dir}/otpkv" SYMBOLIC)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(src "${WORK_DIR}/src")
set(build "${WORK_DIR}/build")
set(prefix "${WORK_DIR}/prefix")
set(program "${build}/my_app")
set(expected_output "put shopping eggs 3\n")
set(tools -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/../consumers/${KIND}")
    file(COPY "${CMAKE_CURRENT_LIST_DIR}/../consumers/${KIND}/" DESTINATION "${src}")
    file(COPY "${CMAKE_CURRENT_LIST_DIR}/../consumers/main.cpp" DESTINATION "${src}")
endif()

if(KIND STREQUAL "find_package")
    # Installed, then the whole prefix moved: the package must not remember where it was.
    install_with_cmake("${WORK_DIR}/first-prefix")
    file(RENAME "${WORK_DIR}/first-prefix" "${prefix}")
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools} "-DCMAKE_PREFIX_PATH=${prefix}")
    run("${CMAKE_COMMAND}" --build "${build}")

elseif(KIND STREQUAL "add_subdirectory")
    vendor_as(third_party)
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools})
    run("${CMAKE_COMMAND}" --build "${build}")
    # By default otpkv brings no install rules: installing the parent installs none of it.
    run("${CMAKE_COMMAND}" --install "${build}" --prefix "${prefix}")
    file(GLOB_RECURSE leaked "${prefix}/*")
    if(leaked)
        message(FATAL_ERROR "installing the parent installed otpkv's files: ${leaked}")
    endif()

elseif(KIND STREQUAL "add_subdirectory_install")
    vendor_as(third_party)
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools})
    run("${CMAKE_COMMAND}" --build "${build}")
    run("${CMAKE_COMMAND}" --install "${build}" --prefix "${prefix}")
    foreach(file IN ITEMS share/cmake/my_lib/my_libTargets.cmake
                          share/cmake/otpkv/otpkvTargets.cmake include/otpkv/otpkv.hpp)
        if(NOT EXISTS "${prefix}/${file}")
            message(FATAL_ERROR "the parent's install lacks ${file}")
        endif()
    endforeach()

elseif(KIND STREQUAL "fetch_content")
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools}
        "-DFETCHCONTENT_SOURCE_DIR_OTPKV=${OTPKV_SOURCE_DIR}"
        -DOTPKV_GIT_URL=never-fetched.invalid)
    run("${CMAKE_COMMAND}" --build "${build}")

elseif(KIND STREQUAL "pkg_config")
    # The default layout; then a deeper data folder, installed and moved: otpkv.pc must
    # find the headers from where it lies.
    install_with_cmake("${prefix}")
    run("${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${prefix}/share/pkgconfig"
        make -C "${src}" "CXX=${CXX_COMPILER}")
    run("${src}/my_app")
    if(NOT run_output STREQUAL expected_output)
        message(FATAL_ERROR "my_app (default layout) printed '${run_output}'")
    endif()
    file(REMOVE "${src}/my_app")
    install_with_cmake("${WORK_DIR}/deep-first" -DCMAKE_INSTALL_DATADIR=lib/otpkv/data)
    file(RENAME "${WORK_DIR}/deep-first" "${WORK_DIR}/deep")
    run("${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${WORK_DIR}/deep/lib/otpkv/data/pkgconfig"
        make -C "${src}" "CXX=${CXX_COMPILER}")
    set(program "${src}/my_app")

elseif(KIND STREQUAL "meson_subproject")
    vendor_as(subprojects)
    run("${CMAKE_COMMAND}" -E env "CXX=${CXX_COMPILER}" "${MESON}" setup "${build}" "${src}")
    run("${MESON}" introspect --tests "${build}")
    if(NOT run_output MATCHES "^\\[\\]")
        message(FATAL_ERROR "otpkv registered tests in a parent meson project: ${run_output}")
    endif()
    run("${MESON}" compile -C "${build}")

elseif(KIND STREQUAL "meson_installed")
    # Installed by meson this time: its otpkv.pc comes from the same template as CMake's.
    run("${CMAKE_COMMAND}" -E env "CXX=${CXX_COMPILER}" "${MESON}" setup
        "${WORK_DIR}/otpkv-meson" "${OTPKV_SOURCE_DIR}" "--prefix=${prefix}"
        -Dtests=disabled -Dexamples=disabled)
    run("${MESON}" install -C "${WORK_DIR}/otpkv-meson")
    run("${CMAKE_COMMAND}" -E env "CXX=${CXX_COMPILER}"
        "PKG_CONFIG_PATH=${prefix}/share/pkgconfig" "${MESON}" setup "${build}" "${src}")
    run("${MESON}" compile -C "${build}")

elseif(KIND STREQUAL "incompatible_version")
    install_with_cmake("${prefix}")
    execute_process(COMMAND "${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools}
                            "-DCMAKE_PREFIX_PATH=${prefix}"
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc EQUAL 0)
        message(FATAL_ERROR "find_package(otpkv 1.0) accepted otpkv ${OTPKV_VERSION}")
    endif()
    foreach(word IN ITEMS "\"otpkv\"" "\"1.0\"" "version: ${OTPKV_VERSION}")
        string(FIND "${err}" "${word}" at)
        if(at EQUAL -1)
            message(FATAL_ERROR "the refusal does not say ${word}:\n${err}")
        endif()
    endforeach()
    message(STATUS "refused as it should be:\n${err}")
    return()

elseif(KIND STREQUAL "conan_test_package")
    # Conan is not on our machines; its test_package's CMake project is still built here,
    # against a plain install (Conan's CMakeDeps gives it the same package and target).
    install_with_cmake("${prefix}")
    run("${CMAKE_COMMAND}" -S "${OTPKV_SOURCE_DIR}/test_package" -B "${build}" ${tools}
        "-DCMAKE_PREFIX_PATH=${prefix}")
    run("${CMAKE_COMMAND}" --build "${build}")
    set(program "${build}/test_package")
    set(expected_output "otpkv ${OTPKV_VERSION}: put shopping eggs 3\n")

elseif(KIND STREQUAL "vcpkg_port_layout")
    # The port's configure options and install leave exactly these files.
    install_with_cmake("${prefix}")
    file(GLOB_RECURSE installed RELATIVE "${prefix}" "${prefix}/*")
    file(GLOB_RECURSE headers RELATIVE "${OTPKV_SOURCE_DIR}" "${OTPKV_SOURCE_DIR}/include/*")
    set(expected ${headers} share/cmake/otpkv/otpkvConfig.cmake
        share/cmake/otpkv/otpkvConfigVersion.cmake share/cmake/otpkv/otpkvTargets.cmake
        share/pkgconfig/otpkv.pc)
    list(SORT installed)
    list(SORT expected)
    if(NOT installed STREQUAL expected)
        string(REPLACE ";" "\n  " installed "${installed}")
        string(REPLACE ";" "\n  " expected "${expected}")
        message(FATAL_ERROR "installed:\n  ${installed}\nexpected:\n  ${expected}")
    endif()
    list(LENGTH installed count)
    message(STATUS "the port's install holds exactly the ${count} expected files")
    return()

else()
    message(FATAL_ERROR "unknown KIND '${KIND}'")
endif()

run("${program}")
if(NOT run_output STREQUAL expected_output)
    message(FATAL_ERROR "${program} printed '${run_output}', expected '${expected_output}'")
endif()
message(STATUS "consumer (${KIND}) built and printed: ${run_output}")
