// SPDX-License-Identifier: MIT
// doctest's main, with one rule added: a run whose filters select no test case fails.
// ctest and meson pick each test file with --source-file=*<file>; a renamed file or a
// mistyped filter must not turn into a green run of nothing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

namespace {

unsigned selected_test_cases = 0;

// Listens for the end of the run to learn how many test cases passed the filters.
struct selection_listener : doctest::IReporter {
    explicit selection_listener(const doctest::ContextOptions& /*options*/) {}
    void test_run_end(const doctest::TestRunStats& stats) override {
        selected_test_cases = stats.numTestCasesPassingFilters;
    }
    void report_query(const doctest::QueryData& /*data*/) override {}
    void test_run_start() override {}
    void test_case_start(const doctest::TestCaseData& /*data*/) override {}
    void test_case_reenter(const doctest::TestCaseData& /*data*/) override {}
    void test_case_end(const doctest::CurrentTestCaseStats& /*stats*/) override {}
    void test_case_exception(const doctest::TestCaseException& /*e*/) override {}
    void subcase_start(const doctest::SubcaseSignature& /*signature*/) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData& /*data*/) override {}
    void log_message(const doctest::MessageData& /*data*/) override {}
    void test_case_skipped(const doctest::TestCaseData& /*data*/) override {}
};

} // namespace

DOCTEST_REGISTER_LISTENER("selection", 1, selection_listener);

int main(int argc, char** argv) {
    doctest::Context context(argc, argv);
    const int result = context.run();
    if (context.shouldExit()) {
        return result; // --help, --list-test-cases and the like
    }
    if (result == 0 && selected_test_cases == 0) {
        std::fprintf(stderr, "no test case matched the filters: failing rather than passing\n");
        return 1;
    }
    return result;
}
