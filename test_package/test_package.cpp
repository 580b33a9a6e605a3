// SPDX-License-Identifier: MIT
#include <otpkv/otpkv.hpp>

#include <cstdio>

int main() {
    const otpkv::command cmd = otpkv::parse("PUT shopping eggs 3\r\n");
    std::printf("otpkv %d.%d.%d: %s\n", otpkv::version.major, otpkv::version.minor,
                otpkv::version.patch, otpkv::to_string(cmd).c_str());
    return cmd.kind == otpkv::command_kind::put ? 0 : 1;
}
