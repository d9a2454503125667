/*
 * edge's HTTP/1.x message-head parser and chunked-body decoder.
 *
 * The API follows the shape of picohttpparser (this is our own code): the
 * caller owns one buffer, the parser never allocates, and every string it
 * reports is a pointer into that buffer.  The contract is fixed in
 * docs/internals.md, section 5.
 *
 * Strictness: this parser faces the internet, so anything that another
 * implementation could read in a different way is refused (RFC 9112 sections
 * 2.2, 3, 5 and 7.1; RFC 9110 section 5.5).  In short: CRLF only (bare LF and
 * bare CR are errors), no obs-fold, no whitespace before the colon, no
 * control characters other than HTAB in field values, HTTP/1.0 and HTTP/1.1
 * only.  See http_parser.c for the rule behind each check.
 */
#ifndef EDGE_HTTP_PARSER_H
#define EDGE_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes of edge_parse_request / edge_parse_response (and -1/-2 of
 * edge_decode_chunked). */
#define EDGE_PARSE_ERROR -1            /* not a valid HTTP/1.x head: 400 / 502 */
#define EDGE_PARSE_INCOMPLETE -2       /* valid so far, need more bytes */
#define EDGE_PARSE_TOO_MANY_HEADERS -3 /* more header lines than *num_headers: 431 */

/* Limits of the chunked decoder (compile-time; override with -D). */
#ifndef EDGE_CHUNK_LINE_MAX
/* bytes of chunk-ext (from the first ";") in one chunk-size line, CRLF excluded */
#define EDGE_CHUNK_LINE_MAX 4096
#endif
#ifndef EDGE_TRAILER_MAX
/* bytes after the last-chunk line: trailer fields and the final CRLF */
#define EDGE_TRAILER_MAX 65536
#endif

struct edge_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing OWS removed */
    size_t value_len;
};

/*
 * Parse a request head: request-line, header lines, empty line.
 *
 * *num_headers is the capacity of `headers` on input and the number of
 * headers found on output.  `last_len` is the length of a previous call's
 * buffer that returned EDGE_PARSE_INCOMPLETE for this same message (0 on the
 * first call): when the bytes added since then hold no LF the head cannot
 * have ended, so the call returns EDGE_PARSE_INCOMPLETE without rescanning.
 * (This can defer an error until the next LF arrives, never hide one.)
 *
 * Returns the number of bytes of the head (> 0; it includes empty lines
 * skipped before the request-line), or EDGE_PARSE_ERROR,
 * EDGE_PARSE_INCOMPLETE, EDGE_PARSE_TOO_MANY_HEADERS.  On a return <= 0,
 * *num_headers is left unchanged and the other outputs are unspecified.
 * Heads longer than INT_MAX bytes are never complete.
 */
int edge_parse_request(const char *buf, size_t len,
                       const char **method, size_t *method_len,
                       const char **path, size_t *path_len, int *minor_version,
                       struct edge_header *headers, size_t *num_headers, size_t last_len);

/*
 * Parse a response head: status-line, header lines, empty line.  Same return
 * values and rules as edge_parse_request.  A status-line without a reason
 * phrase ("HTTP/1.1 200" with or without the trailing SP) yields
 * *msg_len == 0.  *status is the 3-digit status code, 100-999 (a first
 * digit 0 is an error; judging 600-999 is up to the caller).
 */
int edge_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                        const char **msg, size_t *msg_len,
                        struct edge_header *headers, size_t *num_headers, size_t last_len);

/*
 * After edge_parse_request returned EDGE_PARSE_ERROR, tell whether the
 * request-line carried a well-formed but unsupported version, so the caller
 * can answer 505 rather than 400 (RFC 9110 section 15.6.6).
 *
 * Returns 0 and sets *major (and *minor, or -1 when the minor digit has not
 * arrived) when buf starts with [CRLF...] method SP target SP "HTTP/" DIGIT;
 * returns -1 otherwise.  Only meant for the error path.
 */
int edge_request_http_version(const char *buf, size_t len, int *major, int *minor);

/*
 * Chunked transfer coding decoder (RFC 9112 section 7.1).  Zero the struct to
 * start a body.  The fields are private.
 */
struct edge_chunked_decoder {
    uint64_t bytes_left; /* data bytes left in this chunk, or the size being read */
    uint32_t line_len;   /* bytes of the current size line, or of the trailer section */
    uint8_t state;
    uint8_t hex_digits;  /* 1 once a digit of the chunk size was read */
};

/*
 * Decode buf[0 .. *bufsz) in place: the chunk data is moved to the front of
 * buf and *bufsz becomes its length; the framing (sizes, extensions, CRLFs,
 * trailers) is dropped.  The decoder keeps its state between calls, so the
 * input may be split at any byte.
 *
 * Returns
 *   -2  (EDGE_PARSE_INCOMPLETE) all input consumed, the body goes on;
 *   -1  (EDGE_PARSE_ERROR) invalid framing; buf and *bufsz are unspecified
 *       beyond the data decoded before the error; close the connection;
 *   >=0 the body ended; that many bytes that followed it (the next message)
 *       were moved to buf[*bufsz .. *bufsz + ret), right after the decoded
 *       data.  Calling again after the end returns the whole input as
 *       leftover (*bufsz = 0).
 */
ssize_t edge_decode_chunked(struct edge_chunked_decoder *d, char *buf, size_t *bufsz);

/*
 * Content-Length value (RFC 9110 section 8.6): 1*DIGIT that fits in int64.
 * Anything else (empty, sign, whitespace, a list such as "5, 5", overflow)
 * returns -1.
 */
int64_t edge_parse_content_length(const char *s, size_t len);

/*
 * SIMD selection.  The SSE4.2 scanners are used when the CPU has SSE4.2,
 * unless the environment variable EDGE_NO_SIMD is set to a non-empty value
 * other than "0" at the first parse.  edge_parser_set_simd(0) forces the
 * scalar code, (1) asks for SIMD (granted only when the CPU has it), (-1)
 * re-runs the detection.  Both return whether SIMD is now in use.  Meant for
 * tests and benchmarks; not thread-safe against concurrent parses.
 */
int edge_parser_set_simd(int enable);
int edge_parser_simd_enabled(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_HTTP_PARSER_H */
