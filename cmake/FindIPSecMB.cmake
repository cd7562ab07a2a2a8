# Intel Multi-Buffer Crypto for IPsec. Debian's 1.3 ships no CMake or pkg-config
# files, and only for amd64, so this module is optional: OpenSSL is the fallback.
include(FindPackageHandleStandardArgs)
find_path(IPSecMB_INCLUDE_DIR NAMES intel-ipsec-mb.h)
find_library(IPSecMB_LIBRARY NAMES IPSec_MB)
if(IPSecMB_INCLUDE_DIR AND EXISTS "${IPSecMB_INCLUDE_DIR}/intel-ipsec-mb.h")
  file(STRINGS "${IPSecMB_INCLUDE_DIR}/intel-ipsec-mb.h" _imb_ver
       REGEX "^#define IMB_VERSION_STR \"[0-9.]+\"")
  string(REGEX REPLACE ".*\"([0-9.]+)\".*" "\\1" IPSecMB_VERSION "${_imb_ver}")
  unset(_imb_ver)
endif()
find_package_handle_standard_args(IPSecMB
  REQUIRED_VARS IPSecMB_LIBRARY IPSecMB_INCLUDE_DIR VERSION_VAR IPSecMB_VERSION)
if(IPSecMB_FOUND AND NOT TARGET IPSecMB::IPSecMB)
  add_library(IPSecMB::IPSecMB UNKNOWN IMPORTED)
  set_target_properties(IPSecMB::IPSecMB PROPERTIES
    IMPORTED_LOCATION "${IPSecMB_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${IPSecMB_INCLUDE_DIR}")
endif()
mark_as_advanced(IPSecMB_INCLUDE_DIR IPSecMB_LIBRARY)
