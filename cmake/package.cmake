# Debian packages with CPack (`make package`, docs/production.md "Package"): two .deb
# files from one build tree, one per install component.
#   tool -> zcio      /usr/bin/zcio, its man pages, the systemd units, /etc/zcio/zcio.toml
#   dev  -> zcio-dev  headers, libzcio.a, the CMake package and zcio.pc
# tests/package/run.sh builds them from the test's build tree, runs lintian, installs
# them on this machine, runs /usr/bin/zcio proxy and removes them again.

set(ZCIO_PACKAGE_MAINTAINER
    "zcio maintainers <maintainers@users.noreply.h-seed-a20b8751.example>"
    CACHE STRING "Maintainer field of the Debian packages")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME zcio)
set(CPACK_PACKAGE_VENDOR "zcio")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# Each package's summary is the first line of its CPACK_DEBIAN_<COMP>_DESCRIPTION.
# CPackDeb puts CPACK_PACKAGE_DESCRIPTION_SUMMARY (PROJECT_DESCRIPTION otherwise) in
# front of it unless it is CPack's own default, so it is set to that default.
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${CMAKE_PROJECT_NAME} built using CMake")
set(CPACK_PACKAGE_CONTACT "${ZCIO_PACKAGE_MAINTAINER}")
# Installed as under /usr with DESTDIR staging: install(CODE) rules then see the real
# prefix, so zcio.pc says prefix=/usr and the example config goes to /etc/zcio.
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)
set(CPACK_STRIP_FILES ON)
# The staging directories get 0755 whatever the umask (lintian: non-standard-dir-perm).
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL tool dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)

set(CPACK_DEBIAN_TOOL_PACKAGE_NAME zcio)
set(CPACK_DEBIAN_TOOL_PACKAGE_SECTION net)
# Depends from the binary's shared libraries (dpkg-shlibdeps): libc6, libstdc++6,
# libspdlog, libfmt, libsystemd0, libhttp-parser.
set(CPACK_DEBIAN_TOOL_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_TOOL_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles)
set(CPACK_DEBIAN_TOOL_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_TOOL_DESCRIPTION "zero-copy TCP, UDP and Unix socket proxy
zcio moves bytes between sockets, pipes and files with splice, sendfile and
copy_file_range where the kernel allows. This package holds the zcio command:
a TCP/Unix/UDP proxy with load balancing, health checks, PROXY protocol,
hot restarts that take over the listening sockets, and systemd socket
activation; a file copier, a static HTTP server and client, a UDP echo
server and a benchmark. The service (zcio.service, zcio.socket) reads
/etc/zcio/zcio.toml and is not enabled on installation.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME zcio-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_SUGGESTS "cmake, pkg-config")
set(CPACK_DEBIAN_DEV_DESCRIPTION "zero-copy I/O library for C++23 (development files)
zcio is a C++23 library that moves bytes between sockets, pipes and files
with splice, sendfile and copy_file_range, on an edge-triggered epoll loop
with coroutines. This package holds the headers, the static library, the
CMake package (find_package(zcio)) and zcio.pc for pkg-config.")

include(CPack)
