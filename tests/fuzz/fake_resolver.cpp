// No DNS in a fuzzer: a look-up is slow, depends on the network, and sends whatever the
// fuzzer made up to a real resolver. The targets that reach endpoint::parse link with
// -Wl,--wrap=getaddrinfo, so its call lands here: "localhost" is 127.0.0.1, other names
// do not resolve, and numeric forms go through the real getaddrinfo (which then never
// asks DNS). The parsing around the look-up is what is fuzzed.
#include <cstring>

#include <netdb.h>

extern "C" int __real_getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                                  addrinfo** res);

extern "C" int __wrap_getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                                  addrinfo** res) {
    addrinfo h{};
    if (hints != nullptr) {
        h = *hints;
    }
    h.ai_flags |= AI_NUMERICHOST;
    if (node != nullptr && std::strcmp(node, "localhost") == 0) {
        node = "127.0.0.1";
    }
    return __real_getaddrinfo(node, service, &h, res);
}
