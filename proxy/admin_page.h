// The live HTML page the admin endpoint serves at GET /: one self-contained
// file (proxy/admin_page.html, embedded at build time) that polls
// /sessions?closed=1 and /stats from the browser. Its headers keep it inert:
// a Content-Security-Policy that lets only its own inline style and script
// run (by SHA-256) and fetch only from its own origin.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "admin_http.h"

namespace isoproxy {

// The page as embedded (generated from proxy/admin_page.html by cmake/embed_text.cmake).
std::string_view admin_page_html();

// The text between <tag> and </tag> when the page holds exactly one such
// element; nullopt otherwise. Exposed for tests.
std::optional<std::string_view> admin_page_element(std::string_view html, std::string_view tag);

// The Content-Security-Policy the page is served with.
const std::string& admin_page_csp();

// The answer to GET / and HEAD /.
AdminResponse admin_page_response();

}  // namespace isoproxy
