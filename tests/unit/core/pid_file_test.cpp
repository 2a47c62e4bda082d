#include "pid_file.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "support/process.hpp"

namespace endless::core {
namespace {

TEST(pid_file, written_atomically_and_read_back) {
  test::temp_dir dir;
  const std::string path = dir / "app.pid";
  EXPECT_EQ(read_pid_file(path), -1);
  ASSERT_FALSE(write_pid_file(path, 1234));
  EXPECT_EQ(test::read_file(path), "1234\n");
  ASSERT_FALSE(write_pid_file(path, 5678));
  EXPECT_EQ(read_pid_file(path), 5678);
  // Only the file itself is left: the temporary was renamed.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(pid_file, removed_only_while_it_names_us) {
  test::temp_dir dir;
  const std::string path = dir / "app.pid";
  ASSERT_FALSE(write_pid_file(path, 42));
  EXPECT_FALSE(remove_pid_file(path, 43)) << "removed another process's pid file";
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_TRUE(remove_pid_file(path, 42));
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(pid_file, unwritable_directory_is_an_error_not_a_crash) {
  auto ec = write_pid_file("/nonexistent-dir/app.pid", 1);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
}

}  // namespace
}  // namespace endless::core
