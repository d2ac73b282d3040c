#include "admin_page.h"

#include <openssl/evp.h>

#include <array>

namespace isoproxy {

namespace {

// A CSP hash source ('sha256-BASE64', CSP Level 3 §2.3.1) for an inline
// element's text: the browser hashes exactly the bytes between the tags.
std::string csp_hash(std::string_view text) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int md_len = 0;
  if (EVP_Digest(text.data(), text.size(), md.data(), &md_len, EVP_sha256(), nullptr) != 1) return "'none'";
  std::array<unsigned char, 4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1> b64{};
  const int n = EVP_EncodeBlock(b64.data(), md.data(), static_cast<int>(md_len));
  return "'sha256-" + std::string(reinterpret_cast<const char*>(b64.data()), static_cast<std::size_t>(n)) + "'";
}

std::string build_csp() {
  const std::string_view html = admin_page_html();
  const auto script = admin_page_element(html, "script");
  const auto style = admin_page_element(html, "style");
  // Without its element (a broken edit of the page, caught by the unit test)
  // the source is 'none': the page then fails closed, never open.
  return "default-src 'none'; script-src " + (script ? csp_hash(*script) : std::string("'none'")) +
         "; style-src " + (style ? csp_hash(*style) : std::string("'none'")) +
         "; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
}

}  // namespace

std::optional<std::string_view> admin_page_element(std::string_view html, std::string_view tag) {
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  const auto start = html.find(open);
  if (start == std::string_view::npos || html.find(open, start + 1) != std::string_view::npos) return std::nullopt;
  const auto body = start + open.size();
  const auto end = html.find(close, body);
  if (end == std::string_view::npos || html.find(close, end + 1) != std::string_view::npos) return std::nullopt;
  return html.substr(body, end - body);
}

const std::string& admin_page_csp() {
  static const std::string csp = build_csp();
  return csp;
}

AdminResponse admin_page_response() {
  AdminResponse r;
  r.content_type = "text/html; charset=utf-8";
  r.body = std::string(admin_page_html());
  // Cache-Control: no-store is on every admin answer (admin_http.cpp).
  r.headers.emplace_back("Content-Security-Policy", admin_page_csp());
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  return r;
}

}  // namespace isoproxy
