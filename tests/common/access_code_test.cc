#include "common/access_code.h"

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

TEST(AccessCodeTest, HashIsSaltedAndMatchesOnlyTheCode) {
  auto a = HashAccessCode("letmein", kMinAccessCodeIterations);
  auto b = HashAccessCode("letmein", kMinAccessCodeIterations);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->salt().size(), kAccessCodeSaltBytes);
  EXPECT_EQ(a->hash().size(), kAccessCodeHashBytes);
  EXPECT_EQ(a->iterations(), kMinAccessCodeIterations);
  EXPECT_NE(a->salt(), b->salt());
  EXPECT_NE(a->hash(), b->hash());
  EXPECT_TRUE(AccessCodeMatches(*a, "letmein"));
  EXPECT_TRUE(AccessCodeMatches(*b, "letmein"));
  EXPECT_FALSE(AccessCodeMatches(*a, "letmein "));
  EXPECT_FALSE(AccessCodeMatches(*a, ""));
}

TEST(AccessCodeTest, DefaultIterations) {
  auto h = HashAccessCode("x");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->iterations(), kAccessCodeIterations);
}

TEST(AccessCodeTest, ChecksCodesAndHashShapes) {
  EXPECT_FALSE(HashAccessCode("").ok());
  EXPECT_FALSE(HashAccessCode(std::string(kMaxAccessCodeBytes + 1, 'a')).ok());
  EXPECT_FALSE(HashAccessCode("a\nb").ok());
  auto h = HashAccessCode("ok-code", kMinAccessCodeIterations);
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(CheckAccessCodeHash(*h).ok());
  tunnel::v1::AccessCodeHash bad = *h;
  bad.set_salt("short");
  EXPECT_FALSE(CheckAccessCodeHash(bad).ok());
  bad = *h;
  bad.set_hash(h->hash() + "x");
  EXPECT_FALSE(CheckAccessCodeHash(bad).ok());
  bad = *h;
  bad.set_iterations(1);
  EXPECT_FALSE(CheckAccessCodeHash(bad).ok());
  EXPECT_FALSE(AccessCodeMatches(bad, "ok-code"));
  bad.set_iterations(kMaxAccessCodeIterations + 1);
  EXPECT_FALSE(CheckAccessCodeHash(bad).ok());
}

}  // namespace
}  // namespace tunnel::common
