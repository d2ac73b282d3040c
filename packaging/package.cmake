# Installation and the Debian package (CPack DEB), included at the end of the
# top CMakeLists.txt:
#
#   cmake --build build && cpack -G DEB --config build/CPackConfig.cmake -B build/package
#
# installs the daemon, /etc/isoproxy/isoproxy.toml (a conffile), the systemd
# unit, a logrotate snippet, the man pages isoproxy(8) and isoproxy.toml(5)
# and the documentation; the maintainer scripts in packaging/debian/ create
# the system user.

# The package installs under /usr with its configuration in /etc and its unit
# in /lib/systemd/system, the paths the unit names (ExecStart=/usr/bin/isoproxy):
# `cmake --install build --prefix /usr` installs the same files.
set(ISOPROXY_SYSTEMD_UNIT_DIR /lib/systemd/system CACHE PATH "Where the systemd unit is installed (Debian 12: /lib/systemd/system)")

# Debian's hardening flags (dpkg-buildflags) on what ships, for optimised
# builds only: _FORTIFY_SOURCE needs optimisation, and the sanitizer and
# fuzz builds bring their own instrumentation.
if(CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo|MinSizeRel)$" AND NOT ISOPROXY_SANITIZE AND NOT ISOPROXY_FUZZ)
  foreach(t isoproxy isoproxy_app isoproxy_filters isoproxy_codec)
    target_compile_options(${t} PRIVATE -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection)
  endforeach()
  target_link_options(isoproxy PRIVATE -Wl,-z,relro -Wl,-z,now)
endif()

# Man pages, changelogs: compressed as Debian wants them (gzip -n: no
# timestamp, so the package is reproducible).
set(ISOPROXY_DEB_VERSION "${PROJECT_VERSION}-1")
configure_file(${CMAKE_CURRENT_LIST_DIR}/debian/changelog.in ${CMAKE_BINARY_DIR}/packaging/changelog.Debian @ONLY)
set(ISOPROXY_GZ_OUTPUTS)
foreach(pair
    "${CMAKE_CURRENT_LIST_DIR}/man/isoproxy.8=isoproxy.8.gz"
    "${CMAKE_CURRENT_LIST_DIR}/man/isoproxy.toml.5=isoproxy.toml.5.gz"
    "${CMAKE_SOURCE_DIR}/CHANGELOG.md=changelog.gz"
    "${CMAKE_BINARY_DIR}/packaging/changelog.Debian=changelog.Debian.gz")
  string(REPLACE "=" ";" parts "${pair}")
  list(GET parts 0 src)
  list(GET parts 1 out)
  add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/packaging/${out}
    COMMAND sh -c "gzip -9nc \"$1\" > \"$2\"" sh ${src} ${CMAKE_BINARY_DIR}/packaging/${out}
    DEPENDS ${src} VERBATIM)
  list(APPEND ISOPROXY_GZ_OUTPUTS ${CMAKE_BINARY_DIR}/packaging/${out})
endforeach()
add_custom_target(isoproxy_package_files ALL DEPENDS ${ISOPROXY_GZ_OUTPUTS})

install(TARGETS isoproxy RUNTIME DESTINATION bin)
install(FILES ${CMAKE_SOURCE_DIR}/conf/isoproxy.toml DESTINATION /etc/isoproxy)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/logrotate/isoproxy DESTINATION /etc/logrotate.d)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/systemd/isoproxy.service DESTINATION ${ISOPROXY_SYSTEMD_UNIT_DIR})
install(FILES ${CMAKE_BINARY_DIR}/packaging/isoproxy.8.gz DESTINATION share/man/man8)
install(FILES ${CMAKE_BINARY_DIR}/packaging/isoproxy.toml.5.gz DESTINATION share/man/man5)
set(ISOPROXY_DOCDIR share/doc/isoproxy)
install(FILES
  ${CMAKE_SOURCE_DIR}/README.md
  ${CMAKE_SOURCE_DIR}/conf/schema.md
  ${CMAKE_CURRENT_LIST_DIR}/debian/copyright
  ${CMAKE_BINARY_DIR}/packaging/changelog.gz
  ${CMAKE_BINARY_DIR}/packaging/changelog.Debian.gz
  DESTINATION ${ISOPROXY_DOCDIR})
# Every example, those in folders too (tls-pair/: one file per site).
install(DIRECTORY ${CMAKE_SOURCE_DIR}/conf/examples/ DESTINATION ${ISOPROXY_DOCDIR}/examples
        FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ FILES_MATCHING PATTERN "*.toml")
install(FILES ${CMAKE_CURRENT_LIST_DIR}/systemd/transparent.conf DESTINATION ${ISOPROXY_DOCDIR}/examples/systemd)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/debian/lintian-overrides DESTINATION share/lintian/overrides RENAME isoproxy)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_NAME isoproxy)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "isoproxy maintainers <maintainers@users.noreply.b-seed-358bea8c.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "RFC 1006 (ISO transport over TCP, port 102) repairing proxy")
# The summary becomes the first line of Description:, this the extended part.
set(CPACK_PACKAGE_DESCRIPTION "isoproxy sits inline between two peers that speak RFC 1006 (TPKT and X.224
class 0 over TCP port 102): X.400 message transfer agents, Siemens S7,
IEC 61850 MMS and ICCP. It decodes every frame that passes and repairs what
makes strict peers refuse each other (the TPKT reserved byte, the source
address, TSAP routing and rewriting, TPDU size), with live per-session
statistics, Prometheus metrics and a JSON access log.")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# Library dependencies from dpkg-shlibdeps, plus what the maintainer scripts use.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "logrotate")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${CMAKE_CURRENT_LIST_DIR}/debian/conffiles
  ${CMAKE_CURRENT_LIST_DIR}/debian/postinst
  ${CMAKE_CURRENT_LIST_DIR}/debian/prerm
  ${CMAKE_CURRENT_LIST_DIR}/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_STRIP_FILES TRUE)
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR}/package)
include(CPack)
