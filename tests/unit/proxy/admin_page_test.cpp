// The embedded live page (proxy/admin_page.html) and its headers: one style
// and one script element whose SHA-256 the Content-Security-Policy names,
// nothing loaded from elsewhere, and no way for peer data to become markup.
#include "admin_page.h"

#include <openssl/evp.h>

#include <array>
#include <catch2/catch.hpp>
#include <regex>
#include <string>

using namespace isoproxy;

namespace {

std::string sha256_base64(std::string_view text) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  REQUIRE(EVP_Digest(text.data(), text.size(), md.data(), &len, EVP_sha256(), nullptr) == 1);
  std::array<unsigned char, 128> out{};
  const int n = EVP_EncodeBlock(out.data(), md.data(), static_cast<int>(len));
  return std::string(reinterpret_cast<const char*>(out.data()), static_cast<std::size_t>(n));
}

std::string header(const AdminResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return {};
}

}  // namespace

TEST_CASE("admin page: one inline style and one inline script, named by hash in the CSP", "[admin-page]") {
  const std::string_view html = admin_page_html();
  REQUIRE(html.size() > 1000);
  CHECK(html.substr(0, 15) == "<!DOCTYPE html>");
  const auto script = admin_page_element(html, "script");
  const auto style = admin_page_element(html, "style");
  REQUIRE(script);
  REQUIRE(style);
  CHECK(script->find("poll") != std::string_view::npos);

  const std::string& csp = admin_page_csp();
  CHECK(csp.rfind("default-src 'none'; ", 0) == 0);
  CHECK(csp.find("script-src 'sha256-" + sha256_base64(*script) + "'") != std::string::npos);
  CHECK(csp.find("style-src 'sha256-" + sha256_base64(*style) + "'") != std::string::npos);
  CHECK(csp.find("connect-src 'self'") != std::string::npos);
  CHECK(csp.find("unsafe") == std::string::npos);

  const AdminResponse r = admin_page_response();
  CHECK(r.status == 200);
  CHECK(r.content_type == "text/html; charset=utf-8");
  CHECK(r.body == html);
  CHECK(header(r, "Content-Security-Policy") == csp);
  CHECK(header(r, "X-Content-Type-Options") == "nosniff");
}

TEST_CASE("admin page: self-contained, read-only, and data only ever as text", "[admin-page]") {
  const std::string html(admin_page_html());
  const std::string script(*admin_page_element(html, "script"));
  // Nothing from elsewhere: no external URL, stylesheet, image, font or frame.
  for (const char* s : {"http://", "https://", "<link", "<img", "<iframe", "@import", "url(", " src="}) {
    INFO(s);
    CHECK(html.find(s) == std::string::npos);
  }
  // No API that parses strings as markup or code.
  for (const char* s : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                        "setAttribute(\"on", "createContextualFragment", "DOMParser"}) {
    INFO(s);
    CHECK(script.find(s) == std::string::npos);
  }
  // Read-only: no form, nothing but GET.
  CHECK(html.find("<form") == std::string::npos);
  CHECK(script.find("method") == std::string::npos);
  // The CSP allows neither inline event handlers nor style attributes: none in the markup.
  std::string markup = html;
  markup.erase(markup.find(script), script.size());
  CHECK_FALSE(std::regex_search(markup, std::regex(R"(\son[a-z]+\s*=)", std::regex::icase)));
  CHECK_FALSE(std::regex_search(markup, std::regex(R"(\sstyle\s*=)", std::regex::icase)));
  // It polls what it shows.
  CHECK(script.find("\"sessions?closed=1\"") != std::string::npos);
  CHECK(script.find("\"stats\"") != std::string::npos);
}

TEST_CASE("admin page: element extraction needs exactly one element", "[admin-page]") {
  CHECK(admin_page_element("<p><script>a()</script></p>", "script") == std::optional<std::string_view>("a()"));
  CHECK(admin_page_element("<script></script>", "script") == std::optional<std::string_view>(""));
  CHECK_FALSE(admin_page_element("<p>none</p>", "script"));
  CHECK_FALSE(admin_page_element("<script>a()", "script"));
  CHECK_FALSE(admin_page_element("<script>a()</script><script>b()</script>", "script"));
}
