// SPDX-License-Identifier: MIT
// The program every consumer project builds as `my_app`: parse one command, print it.
#include <otpkv/otpkv.hpp>

#include <cstdio>

int main() {
    const otpkv::command cmd = otpkv::parse("PUT shopping eggs 3\r\n");
    std::printf("%s\n", otpkv::to_string(cmd).c_str());
    return cmd.kind == otpkv::command_kind::put && cmd.value == "3" ? 0 : 1;
}
