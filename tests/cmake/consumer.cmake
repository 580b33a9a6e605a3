# SPDX-License-Identifier: MIT
# Builds and runs a consumer project (tests/consumers/KIND) the way a user would use otpkv,
# then checks what its `my_app` prints.
#   cmake -DKIND=... -DOTPKV_SOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -DCXX_COMPILER=...
#         [-DMESON=...] -P consumer.cmake
# The project is copied to WORK_DIR/src with main.cpp beside it, so that its files can say
# exactly what README.md tells users to write.

function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        string(JOIN " " cmdline ${ARGN})
        message(FATAL_ERROR "failed (${rc}): ${cmdline}\n${out}\n${err}")
    endif()
    set(run_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(src "${WORK_DIR}/src")
set(build "${WORK_DIR}/build")
file(COPY "${CMAKE_CURRENT_LIST_DIR}/../consumers/${KIND}/" DESTINATION "${src}")
file(COPY "${CMAKE_CURRENT_LIST_DIR}/../consumers/main.cpp" DESTINATION "${src}")
set(tools -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")

if(KIND STREQUAL "find_package")
    # What README's install commands do, into a prefix of the test's own.
    run("${CMAKE_COMMAND}" -S "${OTPKV_SOURCE_DIR}" -B "${WORK_DIR}/otpkv-build" ${tools}
        -DOTPKV_BUILD_TESTS=OFF -DOTPKV_BUILD_EXAMPLES=OFF)
    run("${CMAKE_COMMAND}" --install "${WORK_DIR}/otpkv-build" --prefix "${WORK_DIR}/prefix")
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools}
        "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(KIND STREQUAL "add_subdirectory")
    file(MAKE_DIRECTORY "${src}/third_party")
    file(CREATE_LINK "${OTPKV_SOURCE_DIR}" "${src}/third_party/otpkv" SYMBOLIC)
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools})
elseif(KIND STREQUAL "fetch_content")
    run("${CMAKE_COMMAND}" -S "${src}" -B "${build}" ${tools}
        "-DFETCHCONTENT_SOURCE_DIR_OTPKV=${OTPKV_SOURCE_DIR}"
        -DOTPKV_GIT_URL=never-fetched.invalid)
elseif(KIND STREQUAL "meson_subproject")
    file(MAKE_DIRECTORY "${src}/subprojects")
    file(CREATE_LINK "${OTPKV_SOURCE_DIR}" "${src}/subprojects/otpkv" SYMBOLIC)
    run("${CMAKE_COMMAND}" -E env "CXX=${CXX_COMPILER}" "${MESON}" setup "${build}" "${src}")
    run("${MESON}" introspect --tests "${build}")
    if(NOT run_output MATCHES "^\\[\\]")
        message(FATAL_ERROR "otpkv registered tests in a parent meson project: ${run_output}")
    endif()
    run("${MESON}" compile -C "${build}")
else()
    message(FATAL_ERROR "unknown KIND '${KIND}'")
endif()

if(NOT KIND STREQUAL "meson_subproject")
    run("${CMAKE_COMMAND}" --build "${build}")
endif()
run("${build}/my_app")
if(NOT run_output STREQUAL "put shopping eggs 3\n")
    message(FATAL_ERROR "my_app printed '${run_output}'")
endif()
message(STATUS "consumer (${KIND}) built and printed: ${run_output}")
