// Human and JSON forms of decoded frames, shared by `isoproxy decode` and
// (later) the relay's logs and admin views, so a field has one name everywhere.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "codec/x224.h"

namespace isoproxy {

// JSON object for a decoded TPDU (fields named as in the README's decode section).
nlohmann::json tpdu_json(const codec::Tpdu& t);
// JSON object for a whole frame: tpkt header, tpdu, anomalies, hex.
nlohmann::json frame_json(const codec::Frame& f);
nlohmann::json anomalies_json(const std::vector<codec::Anomaly>& a);
nlohmann::json decode_error_json(const codec::DecodeError& e);

// Multi-line text, one field per line, indented by `indent` spaces; anomalies last.
std::string tpdu_text(const codec::Tpdu& t, int indent);
std::string frame_text(const codec::Frame& f, int indent);
std::string anomalies_text(const std::vector<codec::Anomaly>& a, int indent);

// "SWISSLIFETSAP" / "0102": the TSAP's display form (ASCII when printable).
std::string tsap_display(codec::Bytes b);

}  // namespace isoproxy
