# Status lines and the built-in error pages, prebuilt once.

STATUS_REASONS = {
    100: b"Continue", 101: b"Switching Protocols",
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Moved Temporarily", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Not Allowed", 406: b"Not Acceptable", 408: b"Request Time-out", 409: b"Conflict",
    410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed",
    413: b"Request Entity Too Large", 414: b"Request-URI Too Large",
    415: b"Unsupported Media Type", 416: b"Requested Range Not Satisfiable",
    417: b"Expectation Failed", 421: b"Misdirected Request", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Temporarily Unavailable", 504: b"Gateway Time-out",
    505: b"HTTP Version Not Supported",
}


cdef bytes status_reason(int status):
    r = STATUS_REASONS.get(status)
    return r if r is not None else b"Unknown"


# nginx's internal codes for TLS refusals: answered as 400 with their own page text
TLS_ERROR_TEXTS = {
    495: b"The SSL certificate error",
    496: b"No required SSL certificate was sent",
    497: b"The plain HTTP request was sent to HTTPS port",
}


cdef inline int wire_status(int status) noexcept:
    """The status that goes on the wire and in the log for one of nginx's internal codes."""
    return 400 if 495 <= status <= 497 else status


# server_tokens (modules/http_core.py): the Server field edge writes on the responses it
# makes, and the name at the foot of its error pages. "edge" (off) or "edge/VERSION".
cdef bytes g_server_name = b"edge"
cdef bytes g_server_line = b"Server: edge\r\n"


def set_server_tokens(bytes name):
    """Set the server name edge shows (server_tokens): b"edge" or b"edge/VERSION".
    Prebuilt error pages are rebuilt on their next use."""
    global g_server_name, g_server_line
    if name == g_server_name:
        return
    g_server_name = name
    g_server_line = b"Server: " + name + b"\r\n"
    _error_heads.clear()
    _error_bodies.clear()


def server_tokens_name():
    return g_server_name


cdef bytes error_page_body(int status):
    text = TLS_ERROR_TEXTS.get(status)
    if text is not None:
        return (b"<html>\r\n<head><title>400 %s</title></head>\r\n<body>\r\n"
                b"<center><h1>400 Bad Request</h1></center>\r\n<center>%s</center>\r\n"
                b"<hr><center>%s</center>\r\n</body>\r\n</html>\r\n" % (text, text, g_server_name))
    reason = status_reason(status)
    return (b"<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1></center>\r\n"
            b"<hr><center>%s</center>\r\n</body>\r\n</html>\r\n" % (status, reason, status, reason,
                                                                   g_server_name))


# status -> prebuilt "HTTP/1.1 ... Content-Length: N\r\n" (Date, Connection and the body follow)
cdef dict _error_heads = {}
cdef dict _error_bodies = {}


cdef bytes error_head(int status):
    h = _error_heads.get(status)
    if h is None:
        body = error_page_body(status)
        h = (b"HTTP/1.1 %d %s\r\n%sContent-Type: text/html\r\nContent-Length: %d\r\n"
             % (wire_status(status), status_reason(wire_status(status)), g_server_line, len(body)))
        _error_heads[status] = h
        _error_bodies[status] = body
    return h


cdef bytes error_body(int status):
    error_head(status)
    return _error_bodies[status]
