// fixture_util.h — loading the hand-written hwloc XML fixtures in the
// topology tests (EPD_TOPOLOGY_FIXTURES is the fixtures folder, set by CMake).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "topology.h"

namespace epd::test {

inline std::string fixture(const char* name) { return std::string(EPD_TOPOLOGY_FIXTURES) + "/" + name; }

// The fixture's topology; a test failure naming the fixture when it does not load.
inline Topology load(const char* name) {
  Result<Topology> r = Topology::load_xml_file(fixture(name));
  if (!r) ADD_FAILURE() << name << ": " << r.status().to_string();
  EXPECT_TRUE(r.is_ok());
  return std::move(r.value());
}

// {lo, lo + 1, ..., hi}.
inline std::vector<int> range(int lo, int hi) {
  std::vector<int> v;
  for (int i = lo; i <= hi; ++i) v.push_back(i);
  return v;
}

}  // namespace epd::test
