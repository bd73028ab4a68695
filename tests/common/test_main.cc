// test_main.cc — the gtest main of every epd test binary: exit code 77 (ctest
// SKIP_RETURN_CODE) only when every case that ran was skipped and none failed,
// so a binary is reported "skipped" only when nothing in it could run here (no
// GPU, no namespaces), and a failure is never hidden behind a skipped case.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  const ::testing::UnitTest* u = ::testing::UnitTest::GetInstance();
  if (rc == 0 && u->failed_test_count() == 0 && u->successful_test_count() == 0 &&
      u->skipped_test_count() > 0)
    return 77;
  return rc;
}
