// Per-session filter instances, run in order toward the upstream and in
// reverse toward the client (Envoy's read/write filter order).
#pragma once

#include <memory>
#include <vector>

#include "filters/filter.h"

namespace isoproxy::filters {

using FactoryList = std::vector<std::shared_ptr<const FilterFactory>>;

class FilterChain {
 public:
  explicit FilterChain(const FactoryList& factories);

  Verdict run(FilterContext& ctx, ChainFrame& frame);
  bool empty() const { return filters_.empty(); }
  // True if any filter must see frames after the connection phase.
  bool needs_data_phase() const { return needs_data_phase_; }
  // True if a filter keeps per-session state: the session never parks.
  bool keeps_session_state() const { return keeps_session_state_; }
  // True if a filter chooses the upstream from the CR.
  bool routes() const { return routes_; }
  // True if a filter must judge the client's CR (FilterFactory::guards_cr).
  bool guards_cr() const { return guards_cr_; }
  // For a parked session woken with this new chain (Filter::resume_after_handshake).
  void resume_after_handshake();

 private:
  std::vector<std::unique_ptr<Filter>> filters_;
  bool needs_data_phase_ = false;
  bool keeps_session_state_ = false;
  bool routes_ = false;
  bool guards_cr_ = false;
};

}  // namespace isoproxy::filters
