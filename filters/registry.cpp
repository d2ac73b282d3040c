#include "filters/registry.h"

namespace isoproxy::filters {

// Each kind's parser lives in its own file (one file per filter).
std::shared_ptr<const FilterFactory> parse_tpkt_reserved(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_tsap_annotate(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_tsap_acl(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_tsap_rewrite(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_tpdu_size(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_tsap_route(const std::string& name, conf::TableReader& t);
std::shared_ptr<const FilterFactory> parse_trace(const std::string& name, conf::TableReader& t);

const std::vector<FilterKind>& filter_kinds() {
  static const std::vector<FilterKind> kinds = {
      {"tpkt-reserved", "sets the TPKT reserved byte to 0 on the TPDU types and directions configured",
       &parse_tpkt_reserved},
      {"tsap-annotate", "records TSAPs, TPDU size, class, references, DR reason and ER cause in the session's stats",
       &parse_tsap_annotate},
      {"tsap-acl", "allows or refuses a connection on its CR by calling/called TSAP and client address (refusal: DR)",
       &parse_tsap_acl},
      {"tsap-rewrite", "replaces a calling or called TSAP in the CR and puts the original back in the CC",
       &parse_tsap_rewrite},
      {"tpdu-size", "clamps the TPDU size proposed in the CR and confirmed in the CC to a maximum",
       &parse_tpdu_size},
      {"tsap-route", "chooses the upstream (address, source) by called and/or calling TSAP, with a default route",
       &parse_tsap_route},
      {"trace", "writes both directions of selected sessions to size-rotated pcap files that tshark and Wireshark dissect",
       &parse_trace},
  };
  return kinds;
}

const FilterKind* find_filter_kind(std::string_view kind) {
  for (const auto& k : filter_kinds()) {
    if (k.kind == kind) return &k;
  }
  return nullptr;
}

}  // namespace isoproxy::filters
