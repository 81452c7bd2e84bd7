#include "common/slug.h"

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

TEST(SlugTest, AcceptsValidSlugs) {
  EXPECT_TRUE(CheckSlug("cam-01").ok());
  EXPECT_TRUE(CheckSlug("abc").ok());
  EXPECT_TRUE(CheckSlug(std::string(32, 'a')).ok());
}

TEST(SlugTest, RejectsEachRuleWithAMessage) {
  EXPECT_NE(CheckSlug("ab").message().find("3-32"), std::string::npos);
  EXPECT_FALSE(CheckSlug(std::string(33, 'a')).ok());
  EXPECT_NE(CheckSlug("Cam").message().find("lowercase"), std::string::npos);
  EXPECT_FALSE(CheckSlug("a_b").ok());
  EXPECT_FALSE(CheckSlug("a.bc").ok());
  EXPECT_NE(CheckSlug("-abc").message().find("start or end"),
            std::string::npos);
  EXPECT_FALSE(CheckSlug("abc-").ok());
  EXPECT_NE(CheckSlug("www").message().find("reserved"), std::string::npos);
  EXPECT_FALSE(CheckSlug("admin").ok());
  EXPECT_FALSE(CheckSlug("tunnel").ok());
}

TEST(SlugTest, RandomSlugsAreValidAndDiffer) {
  std::string a = RandomSlug();
  std::string b = RandomSlug();
  EXPECT_EQ(a.size(), 8u);
  EXPECT_TRUE(CheckSlug(a).ok()) << a;
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace tunnel::common
