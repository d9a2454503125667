/*
 * edge's HTTP/1.x message-head parser and chunked-body decoder.
 * Interface and return values: http_parser.h and docs/internals.md section 5.
 *
 * Theory of operation
 * -------------------
 * The head parsers are a single forward pass over the caller's buffer with a
 * cursor `p` and an `end`.  Every step first checks for the end of the buffer
 * and returns EDGE_PARSE_INCOMPLETE there, and returns EDGE_PARSE_ERROR on the
 * first byte that can not be part of a valid head.  So for any input, the
 * result on a prefix is INCOMPLETE until the first offending byte, and ERROR
 * from there on: an invalid head is refused as early as it can be, and a head
 * fed byte by byte gives the same result as the whole head.
 *
 * The long runs (request-target, field names, field values, reason phrases)
 * are found by scanners that look for the first byte outside the run's
 * class.  They use SSE4.2 PCMPESTRI with byte ranges when the CPU has it
 * (chosen at run time, so the file builds with plain -O2 and on any
 * architecture), and a lookup table otherwise.  Both paths give the same
 * result; the tests run every case through both.
 *
 * Rules (RFC 9112 unless noted).  We refuse, rather than repair, anything that
 * a server or proxy behind us could read differently (request smuggling):
 *   - lines end with CRLF; a bare LF or a bare CR is an error (2.2 allows a
 *     recipient to accept bare LF; we do not, as it desynchronises parsers);
 *   - empty lines (CRLF) before a request-line are skipped (2.2);
 *   - request-line = method SP request-target SP HTTP-version CRLF, one SP
 *     each, method a token, target visible ASCII or obs-text (3, 3.2);
 *   - HTTP-version is "HTTP/1.0" or "HTTP/1.x", case-sensitive (2.3), a minor
 *     above 1 read as 1 (2.6); other majors fail;
 *     edge_request_http_version() tells a 505 from a 400 afterwards;
 *   - status-line = HTTP-version SP 3DIGIT SP reason CRLF; the SP before an
 *     empty reason may be missing (4); the status is 100-999;
 *   - field-line = field-name ":" OWS field-value OWS (5); the name is a
 *     token (RFC 9110 5.1), so whitespace before the colon is an error
 *     (5.1: MUST reject); a line starting with SP/HTAB (obs-fold, 5.2, or
 *     whitespace before the first field, 2.2) is an error;
 *   - field values hold HTAB, SP, VCHAR and obs-text only (RFC 9110 5.5:
 *     CR, LF and NUL MUST be rejected; we also reject the other CTLs and DEL,
 *     which no legitimate client sends and some back ends mishandle);
 *   - the reported value has its leading and trailing OWS removed (5).
 */
#include "http_parser.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EDGE_DISABLE_SSE42)
/* The intrinsics header is usable without -msse4.2: the SSE4.2 code below is
 * compiled for that target by a function attribute and only called after a
 * CPU check.  -DEDGE_DISABLE_SSE42 builds the portable code only, as on
 * non-x86 targets. */
#define EDGE_HAVE_SSE42 1
#include <nmmintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* ------------------------------------------------------------------------ */
/* Character classes                                                        */
/* ------------------------------------------------------------------------ */

#define C_TCHAR 1  /* tchar (RFC 9110 5.6.2): methods, field names */
#define C_FIELD 2  /* HTAB, SP, VCHAR, obs-text: field values, reasons, chunk-ext */
#define C_TARGET 4 /* VCHAR, obs-text: request-target (obs-text as nginx accepts it) */

/* Generated, one row per 16 bytes: C_TCHAR for !#$%&'*+-.^_`|~ DIGIT ALPHA;
 * C_FIELD for 0x09, 0x20-0x7E, 0x80-0xFF; C_TARGET for 0x21-0x7E, 0x80-0xFF. */
static const unsigned char char_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    2, 7, 6, 7, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6, /* 0x20  !"#$%&'()*+,-./ */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, /* 0x30 0-9:;<=>? */
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x40 @A-O */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 7, 7, /* 0x50 P-Z[\]^_ */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x60 `a-o */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 7, 6, 7, 0, /* 0x70 p-z{|}~ DEL */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0x80 obs-text */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0x90 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xA0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xB0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xC0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xD0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xE0 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0xF0 */
};

#define IS(c, cls) (char_class[(unsigned char)(c)] & (cls))

/* ------------------------------------------------------------------------ */
/* SIMD selection                                                           */
/* ------------------------------------------------------------------------ */

/* -1: not decided yet; 0: scalar; 1: SSE4.2.  Read once per parse call.  A
 * race between two first calls is harmless: both store the same value. */
static int simd_mode = -1;

static int cpu_has_sse42(void)
{
#ifdef EDGE_HAVE_SSE42
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    return 0;
#endif
}

static int simd_detect(void)
{
    const char *off = getenv("EDGE_NO_SIMD");
    int on = cpu_has_sse42();
    if (off != NULL && off[0] != '\0' && strcmp(off, "0") != 0)
        on = 0;
    simd_mode = on;
    return on;
}

static inline int simd_on(void)
{
    int m = simd_mode;
    return LIKELY(m >= 0) ? m : simd_detect();
}

int edge_parser_set_simd(int enable)
{
    if (enable < 0)
        return simd_detect();
    simd_mode = enable ? cpu_has_sse42() : 0;
    return simd_mode;
}

int edge_parser_simd_enabled(void)
{
    return simd_on();
}

/* ------------------------------------------------------------------------ */
/* Scanners: return the first byte at or after p outside a class, or end.   */
/* ------------------------------------------------------------------------ */

#ifdef EDGE_HAVE_SSE42
/* PCMPESTRI range tables: pairs [lo, hi] of the bytes that END a run.  With
 * unsigned byte compares the instruction reports the index of the first byte
 * of a 16-byte block that falls in any pair. */

/* Field values and reason phrases end at any CTL but HTAB, and at DEL. */
static const char field_stop[16] = {0x00, 0x08, 0x0a, 0x1f, 0x7f, 0x7f};
#define FIELD_STOP_LEN 6

/* The request-target ends at CTL, SP and DEL. */
static const char target_stop[16] = {0x00, 0x20, 0x7f, 0x7f};
#define TARGET_STOP_LEN 4

/* Tokens end at any non-tchar.  Exactly needs 10 ranges, the instruction
 * takes 8, so two pairs are widened over rare tchars: 0x28-0x2C includes
 * '*' and '+', 0x7B-0x7D includes '|'.  scan_token steps over those. */
static const char token_stop[16] = {
    0x00, 0x20, /* CTL, SP */
    0x22, 0x22, /* " */
    0x28, 0x2c, /* ( ) [* +] , */
    0x2f, 0x2f, /* / */
    0x3a, 0x40, /* : ; < = > ? @ */
    0x5b, 0x5d, /* [ \ ] */
    0x7b, 0x7d, /* { [|] } */
    (char)0x7f, (char)0xff, /* DEL, obs-text */
};
#define TOKEN_STOP_LEN 16

/* Returns the first byte in `ranges` within whole 16-byte blocks, or the
 * position where fewer than 16 bytes are left (never reads past end). */
__attribute__((target("sse4.2"))) static const char *
sse42_find(const char *p, const char *end, const char *ranges, int ranges_len)
{
    const __m128i r = _mm_loadu_si128((const __m128i *)ranges);
    while (end - p >= 16) {
        const __m128i b = _mm_loadu_si128((const __m128i *)p);
        int i = _mm_cmpestri(r, ranges_len, b, 16,
                             _SIDD_UBYTE_OPS | _SIDD_CMP_RANGES | _SIDD_LEAST_SIGNIFICANT);
        if (i != 16)
            return p + i;
        p += 16;
    }
    return p;
}
#endif /* EDGE_HAVE_SSE42 */

/* The scalar loops below also finish the SIMD path: they scan the last < 16
 * bytes, and stop at once when SIMD already stopped on an end byte. */

static inline const char *scan_field(const char *p, const char *end, int simd)
{
#ifdef EDGE_HAVE_SSE42
    if (simd)
        p = sse42_find(p, end, field_stop, FIELD_STOP_LEN);
#else
    (void)simd;
#endif
    while (p != end && IS(*p, C_FIELD))
        ++p;
    return p;
}

static inline const char *scan_target(const char *p, const char *end, int simd)
{
#ifdef EDGE_HAVE_SSE42
    if (simd)
        p = sse42_find(p, end, target_stop, TARGET_STOP_LEN);
#else
    (void)simd;
#endif
    while (p != end && IS(*p, C_TARGET))
        ++p;
    return p;
}

static inline const char *scan_token(const char *p, const char *end, int simd)
{
#ifdef EDGE_HAVE_SSE42
    if (simd) {
        for (;;) {
            p = sse42_find(p, end, token_stop, TOKEN_STOP_LEN);
            if (end - p < 16)
                break; /* the tail, or a stop in the last block: scalar */
            if (!IS(*p, C_TCHAR))
                return p;
            ++p; /* '*', '+' or '|' */
        }
    }
#else
    (void)simd;
#endif
    while (p != end && IS(*p, C_TCHAR))
        ++p;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Head parsing                                                             */
/* ------------------------------------------------------------------------ */

/* CRLF at *pp.  A CR followed by anything else is a bare CR. */
static inline int expect_crlf(const char **pp, const char *end)
{
    const char *p = *pp;
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != '\r')
        return EDGE_PARSE_ERROR;
    if (++p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != '\n')
        return EDGE_PARSE_ERROR;
    *pp = p + 1;
    return 0;
}

/* HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive (2.3).  Major 1
 * only; a minor above 1 is read as 1 (RFC 9112 2.6: a 1.x message with a higher
 * minor version is handled as the highest 1.x the recipient supports, as nginx
 * does), so "HTTP/1.2" is an HTTP/1.1 request. */
static inline int parse_version(const char **pp, const char *end, int *minor_version)
{
    static const char prefix[] = "HTTP/1.";
    const char *p = *pp;
    size_t i;

    if (LIKELY(end - p >= 8) && memcmp(p, prefix, 7) == 0) {
        p += 7;
    } else {
        for (i = 0; i < sizeof(prefix) - 1; i++, p++) {
            if (p == end)
                return EDGE_PARSE_INCOMPLETE;
            if (*p != prefix[i])
                return EDGE_PARSE_ERROR;
        }
        if (p == end)
            return EDGE_PARSE_INCOMPLETE;
    }
    if (*p < '0' || *p > '9')
        return EDGE_PARSE_ERROR;
    *minor_version = *p == '0' ? 0 : 1;
    *pp = p + 1;
    return 0;
}

/* Header lines up to and including the empty line.  On success *pp points
 * past the empty line and *num_headers is the count; on failure neither is
 * changed. */
static int parse_headers(const char **pp, const char *end, struct edge_header *headers,
                         size_t *num_headers, int simd)
{
    const char *p = *pp;
    const size_t cap = *num_headers;
    size_t n = 0;

    for (;;) {
        const char *name, *value, *value_end;

        if (p == end)
            return EDGE_PARSE_INCOMPLETE;
        if (*p == '\r') { /* the empty line that ends the head */
            if (++p == end)
                return EDGE_PARSE_INCOMPLETE;
            if (*p != '\n')
                return EDGE_PARSE_ERROR;
            *pp = p + 1;
            *num_headers = n;
            return 0;
        }
        /* A field-name is a non-empty token.  This one test also refuses a
         * line that starts with SP/HTAB (obs-fold, 5.2), a bare LF, and a
         * line starting with ':'. */
        if (UNLIKELY(!IS(*p, C_TCHAR)))
            return EDGE_PARSE_ERROR;
        if (UNLIKELY(n == cap))
            return EDGE_PARSE_TOO_MANY_HEADERS;
        name = p;
        p = scan_token(p + 1, end, simd);
        if (p == end)
            return EDGE_PARSE_INCOMPLETE;
        if (UNLIKELY(*p != ':')) /* incl. whitespace before the colon (5.1) */
            return EDGE_PARSE_ERROR;
        headers[n].name = name;
        headers[n].name_len = (size_t)(p - name);
        ++p;

        while (p != end && (*p == ' ' || *p == '\t')) /* leading OWS */
            ++p;
        value = p;
        p = scan_field(p, end, simd);
        if (p == end)
            return EDGE_PARSE_INCOMPLETE;
        if (UNLIKELY(*p != '\r')) /* LF, NUL, other CTL or DEL in the value */
            return EDGE_PARSE_ERROR;
        if (p + 1 == end)
            return EDGE_PARSE_INCOMPLETE;
        if (UNLIKELY(p[1] != '\n'))
            return EDGE_PARSE_ERROR;
        value_end = p;
        while (value_end != value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
            --value_end; /* trailing OWS */
        headers[n].value = value;
        headers[n].value_len = (size_t)(value_end - value);
        ++n;
        p += 2;
    }
}

/* The `last_len` shortcut: a head ends with LF, so if no LF came since the
 * previous (incomplete) call, it is still incomplete. */
static inline int no_new_lf(const char *buf, size_t len, size_t last_len)
{
    return last_len != 0 && last_len <= len &&
           memchr(buf + last_len, '\n', len - last_len) == NULL;
}

int edge_parse_request(const char *buf, size_t len,
                       const char **method, size_t *method_len,
                       const char **path, size_t *path_len, int *minor_version,
                       struct edge_header *headers, size_t *num_headers, size_t last_len)
{
    const char *p = buf, *end;
    int simd, r;

    if (len == 0) /* (before any arithmetic on a possibly NULL buf) */
        return EDGE_PARSE_INCOMPLETE;
    if (len > INT_MAX) /* the return value is an int */
        len = INT_MAX;
    if (no_new_lf(buf, len, last_len))
        return EDGE_PARSE_INCOMPLETE;
    end = buf + len;
    simd = simd_on();

    /* 2.2: "SHOULD ignore at least one empty line (CRLF) received prior to
     * the request-line".  Any number is skipped; the caller bounds the
     * head's size. */
    while (p != end && *p == '\r') {
        if (++p == end)
            return EDGE_PARSE_INCOMPLETE;
        if (*p != '\n')
            return EDGE_PARSE_ERROR;
        ++p;
    }

    /* method = token, then exactly one SP */
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (!IS(*p, C_TCHAR))
        return EDGE_PARSE_ERROR;
    *method = p;
    p = scan_token(p + 1, end, simd);
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != ' ')
        return EDGE_PARSE_ERROR;
    *method_len = (size_t)(p - *method);
    ++p;

    /* request-target, then exactly one SP.  No whitespace inside (3.2:
     * "MUST NOT" be sent, and a server should not try to repair it). */
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (!IS(*p, C_TARGET))
        return EDGE_PARSE_ERROR;
    *path = p;
    p = scan_target(p + 1, end, simd);
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != ' ')
        return EDGE_PARSE_ERROR;
    *path_len = (size_t)(p - *path);
    ++p;

    if ((r = parse_version(&p, end, minor_version)) != 0)
        return r;
    if ((r = expect_crlf(&p, end)) != 0)
        return r;
    if ((r = parse_headers(&p, end, headers, num_headers, simd)) != 0)
        return r;
    return (int)(p - buf);
}

int edge_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                        const char **msg, size_t *msg_len,
                        struct edge_header *headers, size_t *num_headers, size_t last_len)
{
    const char *p = buf, *end;
    int simd, r, i, code = 0;

    if (len == 0)
        return EDGE_PARSE_INCOMPLETE;
    if (len > INT_MAX)
        len = INT_MAX;
    if (no_new_lf(buf, len, last_len))
        return EDGE_PARSE_INCOMPLETE;
    end = buf + len;
    simd = simd_on();

    /* status-line = HTTP-version SP status-code SP [ reason-phrase ] (4).
     * No empty lines are skipped: that allowance is for request-lines. */
    if ((r = parse_version(&p, end, minor_version)) != 0)
        return r;
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != ' ')
        return EDGE_PARSE_ERROR;
    ++p;

    /* status-code = 3DIGIT.  The first digit is the class (RFC 9110 15);
     * there is no class 0, so 000-099 are refused here. */
    for (i = 0; i < 3; i++, p++) {
        unsigned d;
        if (p == end)
            return EDGE_PARSE_INCOMPLETE;
        d = (unsigned)(unsigned char)*p - '0';
        if (d > 9 || (i == 0 && d == 0))
            return EDGE_PARSE_ERROR;
        code = code * 10 + (int)d;
    }
    *status = code;

    /* Many servers drop the SP before an empty reason; accept "200\r\n" and
     * "200 \r\n" alike.  The reason is reported as sent, without trimming. */
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p == ' ')
        ++p;
    else if (*p != '\r')
        return EDGE_PARSE_ERROR;
    *msg = p;
    p = scan_field(p, end, simd);
    if (p == end)
        return EDGE_PARSE_INCOMPLETE;
    if (*p != '\r')
        return EDGE_PARSE_ERROR;
    *msg_len = (size_t)(p - *msg);
    if ((r = expect_crlf(&p, end)) != 0)
        return r;

    if ((r = parse_headers(&p, end, headers, num_headers, simd)) != 0)
        return r;
    return (int)(p - buf);
}

int edge_request_http_version(const char *buf, size_t len, int *major, int *minor)
{
    const char *p = buf, *end;

    if (len == 0)
        return -1;
    end = buf + len;
    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;
    if (p == end || !IS(*p, C_TCHAR))
        return -1;
    p = scan_token(p + 1, end, 0);
    if (p == end || *p != ' ')
        return -1;
    ++p;
    if (p == end || !IS(*p, C_TARGET))
        return -1;
    p = scan_target(p + 1, end, 0);
    if (p == end || *p != ' ')
        return -1;
    ++p;
    if (end - p < 6 || memcmp(p, "HTTP/", 5) != 0 || (unsigned)(unsigned char)p[5] - '0' > 9)
        return -1;
    *major = p[5] - '0';
    *minor = -1;
    if (end - p >= 8 && p[6] == '.' && (unsigned)(unsigned char)p[7] - '0' <= 9)
        *minor = p[7] - '0';
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Chunked transfer coding (RFC 9112 7.1)                                   */
/*                                                                          */
/*   chunked-body = *chunk last-chunk trailer-section CRLF                  */
/*   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF           */
/*   last-chunk   = 1*("0") [ chunk-ext ] CRLF                              */
/*   chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) */
/* (we refuse the BWS before the first ";", see CH_SIZE)                    */
/* ------------------------------------------------------------------------ */

enum {
    CH_SIZE = 0,      /* chunk-size hex digits; a zeroed decoder starts here */
    CH_EXT,           /* chunk-ext bytes, up to CR */
    CH_SIZE_LF,       /* LF ending the size line */
    CH_DATA,          /* chunk-data */
    CH_DATA_CR,       /* CRLF after chunk-data */
    CH_DATA_LF,
    CH_TRAILER_START, /* start of a trailer field line or of the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,        /* LF of the final CRLF */
    CH_DONE,
    CH_ERROR          /* sticky: the stream can not be trusted any more */
};

static inline int hex_value(unsigned char c)
{
    if ((unsigned)c - '0' < 10u)
        return c - '0';
    c |= 0x20; /* ASCII lower case */
    if ((unsigned)c - 'a' < 6u)
        return c - 'a' + 10;
    return -1;
}

ssize_t edge_decode_chunked(struct edge_chunked_decoder *d, char *buf, size_t *bufsz)
{
    const size_t len = *bufsz;
    size_t src = 0, dst = 0, rest;

    if (d->state == CH_ERROR)
        goto error;
    if (d->state == CH_DONE) { /* everything is past the end of the body */
        *bufsz = 0;
        return (ssize_t)len;
    }

    while (src != len) {
        unsigned char c;

        if (d->state == CH_DATA) { /* the bulk of the work: one move per run */
            size_t n = len - src;
            if (n > d->bytes_left)
                n = (size_t)d->bytes_left;
            if (dst != src)
                memmove(buf + dst, buf + src, n);
            dst += n;
            src += n;
            d->bytes_left -= n;
            if (d->bytes_left == 0)
                d->state = CH_DATA_CR;
            continue;
        }

        c = (unsigned char)buf[src++];
        switch (d->state) {
        case CH_SIZE: {
            int v = hex_value(c);
            if (v >= 0) {
                /* The value counts, not the number of digits: leading zeros
                 * are fine ("0004e" is 0x4e).  The size must fit in int64 (so
                 * that callers can hold it in a signed offset). */
                if (d->bytes_left > (uint64_t)(INT64_MAX >> 4))
                    goto error;
                d->bytes_left = (d->bytes_left << 4) | (uint64_t)v;
                d->hex_digits = 1;      /* a digit was seen (1*HEXDIG) */
            } else if (d->hex_digits == 0) {
                goto error; /* chunk-size = 1*HEXDIG */
            } else if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (c == ';') {
                d->state = CH_EXT;
                d->line_len = 1;
            } else {
                /* Whitespace after the size is refused, even the BWS that
                 * 7.1.1 allows before ";": implementations read "1 ;x" and
                 * "1 \r\n" differently, and no real client sends them. */
                goto error;
            }
            break;
        }
        case CH_EXT:
            /* Extensions are ignored, but their bytes must be text (no CTL
             * except HTAB), and their length is bounded: a client must not
             * hold the connection with an endless size line. */
            if (c == '\r') {
                d->state = CH_SIZE_LF;
                break;
            }
            if (!IS(c, C_FIELD) || ++d->line_len > EDGE_CHUNK_LINE_MAX)
                goto error;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto error;
            d->hex_digits = 0;
            d->line_len = 0;
            d->state = d->bytes_left == 0 ? CH_TRAILER_START : CH_DATA;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                goto error;
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto error;
            d->state = CH_SIZE; /* bytes_left, hex_digits, line_len are 0 */
            break;

        /* trailer-section = *( field-line CRLF ), then CRLF (7.1.2).  Fields
         * are checked like header fields; their total size is bounded. */
        case CH_TRAILER_START:
            if (++d->line_len > EDGE_TRAILER_MAX)
                goto error;
            if (c == '\r')
                d->state = CH_END_LF;
            else if (IS(c, C_TCHAR)) /* not SP/HTAB (obs-fold), LF, ':' */
                d->state = CH_TRAILER_NAME;
            else
                goto error;
            break;
        case CH_TRAILER_NAME:
            if (++d->line_len > EDGE_TRAILER_MAX)
                goto error;
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!IS(c, C_TCHAR))
                goto error;
            break;
        case CH_TRAILER_VALUE:
            if (++d->line_len > EDGE_TRAILER_MAX)
                goto error;
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (!IS(c, C_FIELD))
                goto error;
            break;
        case CH_TRAILER_LF:
            if (++d->line_len > EDGE_TRAILER_MAX || c != '\n')
                goto error;
            d->state = CH_TRAILER_START;
            break;
        case CH_END_LF:
            if (++d->line_len > EDGE_TRAILER_MAX || c != '\n')
                goto error;
            goto done;
        default: /* a corrupted decoder */
            goto error;
        }
    }
    *bufsz = dst;
    return EDGE_PARSE_INCOMPLETE;

done:
    /* Whatever follows the body belongs to the next message: move it right
     * behind the decoded data, where the caller will look for it. */
    rest = len - src;
    if (rest != 0 && dst != src)
        memmove(buf + dst, buf + src, rest);
    d->state = CH_DONE;
    *bufsz = dst;
    return (ssize_t)rest;

error:
    d->state = CH_ERROR;
    *bufsz = dst;
    return EDGE_PARSE_ERROR;
}

/* ------------------------------------------------------------------------ */
/* Content-Length (RFC 9110 8.6): Content-Length = 1*DIGIT                  */
/* ------------------------------------------------------------------------ */

int64_t edge_parse_content_length(const char *s, size_t len)
{
    int64_t v = 0;
    size_t i;

    if (len == 0)
        return -1;
    for (i = 0; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        if (v > (INT64_MAX - (int64_t)d) / 10)
            return -1; /* overflow */
        v = v * 10 + (int64_t)d;
    }
    return v;
}
