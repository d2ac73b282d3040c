// Every built-in filter kind, by the name used in `kind = "..."`. Each kind
// parses and validates its own [filter.NAME] table into a shared factory.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"

namespace isoproxy::filters {

// Returns nullptr after recording errors in the reader.
using ParseFactory = std::shared_ptr<const FilterFactory> (*)(const std::string& name, conf::TableReader& table);

struct FilterKind {
  std::string_view kind;     // "tpkt-reserved"
  std::string_view summary;  // one line for --help and errors
  ParseFactory parse;
};

const std::vector<FilterKind>& filter_kinds();
const FilterKind* find_filter_kind(std::string_view kind);

}  // namespace isoproxy::filters
