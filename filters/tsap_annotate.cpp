// tsap-annotate: records what the connection phase says — calling and called
// TSAPs, TPDU size proposed and confirmed, classes, references — and the DR
// reason and ER cause when one passes, into the session's annotations that the
// stats, the admin views and the close line show. Changes nothing on the wire.
#include "conf/toml_reader.h"
#include "filters/registry.h"

namespace isoproxy::filters {

namespace {


class TsapAnnotate final : public Filter {
 public:
  explicit TsapAnnotate(const std::string& name) : name_(name) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    const codec::Tpdu& t = frame.decoded().tpdu;
    SessionAnnotations& a = ctx.annotations();
    // The CR is the client's and the CC the upstream's: one the other way
    // (a peer confused about its role) is not recorded as theirs.
    const bool to_upstream = frame.direction() == Direction::kToUpstream;
    if ((t.type == codec::TpduType::kCR && !to_upstream) || (t.type == codec::TpduType::kCC && to_upstream)) {
      return Verdict::kContinue;
    }
    switch (t.type) {
      case codec::TpduType::kCR:
        // A later CR (snap7 answers one at any time) begins the connection
        // phase again: what it lacks, and what the CC answering the earlier
        // one said, are not this one's.
        a.calling_tsap.reset();
        a.called_tsap.reset();
        a.tpdu_size_code_cc.reset();
        a.class_cc.reset();
        a.responder_ref.reset();
        if (auto c = t.calling_tsap()) a.calling_tsap = *c;
        if (auto c = t.called_tsap()) a.called_tsap = *c;
        a.tpdu_size_code_cr = t.tpdu_size_code();
        a.class_cr = t.preferred_class();
        a.initiator_ref = t.src_ref;
        ctx.count(name_, "cr");
        break;
      case codec::TpduType::kCC:
        // CC echoes the CR's TSAPs (protocol.md §3.2); keep the CR's if both exist.
        if (auto c = t.calling_tsap(); c && !a.calling_tsap) a.calling_tsap = *c;
        if (auto c = t.called_tsap(); c && !a.called_tsap) a.called_tsap = *c;
        a.tpdu_size_code_cc = t.tpdu_size_code();
        a.class_cc = t.preferred_class();
        a.responder_ref = t.src_ref;
        ctx.count(name_, "cc");
        break;
      case codec::TpduType::kDR:
        a.dr_reason = t.reason;
        a.dr_from = frame.direction();
        ctx.count(name_, "dr");
        break;
      case codec::TpduType::kER:
        a.er_cause = t.cause;
        a.er_from = frame.direction();
        ctx.count(name_, "er");
        break;
      default:
        break;
    }
    return Verdict::kContinue;
  }

 private:
  const std::string& name_;
};

class TsapAnnotateFactory final : public FilterFactory {
 public:
  explicit TsapAnnotateFactory(std::string name) : FilterFactory(std::move(name)) {}
  std::string_view kind() const override { return "tsap-annotate"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TsapAnnotate>(name()); }
  // Everything it reads is in CR, CC, DR and ER: DR/ER arrive in the data phase
  // too, but only when the relay is still framing (it stops only when no filter needs it).
  bool needs_data_phase() const override { return false; }
  std::string settings_toml() const override { return {}; }
};

}  // namespace

std::shared_ptr<const FilterFactory> parse_tsap_annotate(const std::string& name, conf::TableReader& t) {
  t.finish();  // no settings of its own: any key is unknown
  return std::make_shared<TsapAnnotateFactory>(name);
}

}  // namespace isoproxy::filters
