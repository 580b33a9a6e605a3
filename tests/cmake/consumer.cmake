# SPDX-License-Identifier: MIT
# Builds and runs a consumer project the way a user would use otpkv.
#   cmake -DKIND=find_package|add_subdirectory -DOTPKV_SOURCE_DIR=... -DWORK_DIR=...
#         -DGENERATOR=... -DCXX_COMPILER=... -P consumer.cmake
# find_package: configures otpkv alone (no tests, no examples), installs it into a fresh
# prefix, then builds the consumer against that prefix.
# add_subdirectory: builds the consumer with otpkv's source tree as a subdirectory.
# Either way the consumer's program must print what it parsed.

function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        string(JOIN " " cmdline ${ARGN})
        message(FATAL_ERROR "failed (${rc}): ${cmdline}\n${out}\n${err}")
    endif()
    set(run_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(tools -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")

if(KIND STREQUAL "find_package")
    run("${CMAKE_COMMAND}" -S "${OTPKV_SOURCE_DIR}" -B "${WORK_DIR}/otpkv-build" ${tools}
        -DOTPKV_BUILD_TESTS=OFF -DOTPKV_BUILD_EXAMPLES=OFF
        "-DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix")
    run("${CMAKE_COMMAND}" --install "${WORK_DIR}/otpkv-build")
    set(consumer_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(KIND STREQUAL "add_subdirectory")
    set(consumer_args "-DOTPKV_SOURCE_DIR=${OTPKV_SOURCE_DIR}")
else()
    message(FATAL_ERROR "unknown KIND '${KIND}'")
endif()

run("${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}/../consumers/${KIND}"
    -B "${WORK_DIR}/consumer-build" ${tools} ${consumer_args})
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/consumer-build")
run("${WORK_DIR}/consumer-build/consumer")
if(NOT run_output STREQUAL "put shopping eggs 3\n")
    message(FATAL_ERROR "consumer printed '${run_output}'")
endif()
message(STATUS "consumer (${KIND}) built and printed: ${run_output}")
