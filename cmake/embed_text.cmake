# Embeds a text file in a generated C++ source as a raw string literal, so that
# the file stays editable on its own (proxy/admin_page.html) and is not a giant
# string in hand-written C++. Run at build time:
#   cmake -DINPUT=in.html -DOUTPUT=out.cpp -DFUNCTION=admin_page_html -DHEADER=admin_page.h -P embed_text.cmake
# The generated file defines `std::string_view isoproxy::FUNCTION()`.
foreach(var INPUT OUTPUT FUNCTION HEADER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "embed_text.cmake: -D${var}=... is required")
  endif()
endforeach()

file(READ "${INPUT}" content)
# The literal ends at )DELIMITER"; a file that contains it cannot be embedded as is.
set(delimiter "isoproxy_embed")
string(FIND "${content}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "embed_text.cmake: ${INPUT} contains ')${delimiter}\"', which would end the raw string literal")
endif()

get_filename_component(input_name "${INPUT}" NAME)
set(generated "// Generated from ${input_name} by cmake/embed_text.cmake: edit that file, not this one.
#include \"${HEADER}\"

namespace isoproxy {

std::string_view ${FUNCTION}() {
  static constexpr char kText[] = R\"${delimiter}(${content})${delimiter}\";
  return {kText, sizeof kText - 1};
}

}  // namespace isoproxy
")
file(WRITE "${OUTPUT}" "${generated}")
