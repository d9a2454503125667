"""keepalive_disable (issue 15): nginx's User-Agent checks decide whether a connection is
kept after the response. nginx 1.22 is the oracle (EDGE_TEST_IMPL=nginx)."""

import pytest

from support import Conn

CONF = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
        location /none/ { keepalive_disable none; return 200 "ok"; }
        location /safari/ { keepalive_disable safari; return 200 "ok"; }
        location /both/ { keepalive_disable msie6 safari; return 200 "ok"; }
    }
}
"""

MSIE6 = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"
MSIE6_SV1 = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)"
MSIE5 = "Mozilla/4.0 (compatible; MSIE 5.5; Windows 98)"
MSIE7 = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)"
OPERA = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1) Opera 8.0"
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/16.1 Safari/605.1.15")
CHROME_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/120.0 Safari/537.36")
SAFARI_WIN = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"


@pytest.mark.parametrize("target,method,agent,connection", [
    ("/", "POST", MSIE6, "close"),            # the default: msie6, for POST only
    ("/", "GET", MSIE6, "keep-alive"),
    ("/", "POST", MSIE5, "close"),
    ("/", "POST", MSIE6_SV1, "keep-alive"),   # MSIE 6 with SV1 keeps it
    ("/", "POST", MSIE7, "keep-alive"),
    ("/", "POST", OPERA, "keep-alive"),       # Opera claiming MSIE is not MSIE
    ("/", "GET", SAFARI, "keep-alive"),
    ("/none/", "POST", MSIE6, "keep-alive"),
    ("/safari/", "POST", MSIE6, "keep-alive"),
    ("/safari/", "GET", SAFARI, "close"),
    ("/safari/", "GET", CHROME_MAC, "keep-alive"),   # Chrome/ is not Safari
    ("/safari/", "GET", SAFARI_WIN, "keep-alive"),   # Safari without Mac OS X
    ("/both/", "POST", MSIE6, "close"),
    ("/both/", "GET", SAFARI, "close"),
])
def test_keepalive_disable(edge, target, method, agent, connection):
    srv = edge(CONF)
    with Conn(srv.port) as c:
        r = c.request(method, target, headers=[("User-Agent", agent)],
                      body=b"" if method == "POST" else None)
        assert r.status == 200
        assert r.header("Connection") == connection
        if connection == "keep-alive":
            assert c.request("GET", "/").status == 200
