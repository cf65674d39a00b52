/* The hot paths in C: cut frames out of a read, check a frame's envelope and stamp it,
 * and stamp a whole run of frames bound for the same node.
 *
 * scan(body, node, stamp) -> (dst, meta, frame) | None
 *
 * It accepts only the canonical compact envelope our SDK writes (frames from
 * other writers that differ in key order or spacing take the general path):
 *
 *     {"routing":{"src":"S","dst":"D","ttl":N,"trace_id":"T"},"meta":{...},"payload":V}
 *
 * where S equals ``node`` (the connection's UUID), D and T are printable
 * ASCII without escapes, 1 <= N <= 255, ``meta`` is a JSON object and V any
 * JSON value, nothing after the closing brace.  For such a frame it returns
 * the destination, meta's bytes and the frame to forward: length header plus
 * the body with ``stamp`` (``,"src_l2_name":"…"``) inserted at the end of
 * ``routing`` -- byte for byte what msgspec writes when the router re-encodes
 * the envelope.
 *
 * Anything else returns None and the caller takes the general path (msgspec
 * decoding, every error reply).  The checker is conservative by design: it
 * may refuse valid JSON it does not handle (deep nesting, \u escapes of
 * surrogates, whitespace in routing), but it must never accept input the
 * general path would reject.  tests/unit/test_fastpath.py checks that
 * against msgspec on generated and mutated frames; a change that should not
 * change any answer is checked against the previous build of this file
 * (tests/unit/test_speedups_baseline.py, hack/diff_speedups.py).
 *
 * extend(bodies, start, node, stamp, dst, meta, soft, hard) -> (data, count)
 *
 * The frames at bodies[start:] that scan() takes with this same destination
 * and meta, stamped and joined into one bytes object: a burst to one node
 * costs the router one step instead of one per frame (see the comment above
 * extend() for where a run stops).
 *
 * split(data, max_frame) -> (bodies, consumed, oversize)
 *
 * Cuts the complete frames (4-byte big-endian length + body) off the front
 * of ``data``: the list of bodies, how many bytes they used, and 0 -- or, at
 * a header announcing more than ``max_frame`` bytes, that size (the bodies
 * before it are still returned; the caller refuses the stream).
 *
 * hop(bodies, start, node, dst, meta, hard, limit) -> (data, count)
 *
 * The link side of extend(): up to ``limit`` frames at bodies[start:] that
 * scan() takes from ``node`` with this ``dst`` and ``meta`` and whose TTL is
 * at least 2, each with its TTL lowered by one (one router hop) and no stamp
 * (the router at the far end of a link names the sender itself), joined with
 * their length headers.  The run stops at the first frame that differs and
 * before the frame that would take it past ``hard`` bytes.
 *
 * frame(head, dst, ttl_trace, trace, meta, payload) -> bytes | None
 * trace_seed(prefix); trace_id() -> str
 *
 * The sending side: a plain message's frame in one allocation, and trace
 * ids (see the comments above them).
 *
 * scan_null / splice_null / extend_null: the same for a ``dst: null`` frame
 * whose decision the router has cached (see the comment above scan_null()).
 *
 * No I/O; the GIL is held throughout.  The only state is the trace-id prefix
 * and counter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_FRAME (128 * 1024)

typedef const unsigned char *cur;

static cur skip_value(cur p, cur end, int depth);

static cur skip_ws(cur p, cur end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0. */
static Py_ssize_t utf8_len(cur p, cur end)
{
    unsigned char c = p[0];
    Py_ssize_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;       /* no overlong forms */
        else if (c == 0xED) hi = 0x9F;  /* no surrogates */
    }
    else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;  /* nothing above U+10FFFF */
    }
    else return 0;
    if (end - p < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (Py_ssize_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* Eight bytes at a time: nonzero when any of them needs a look of its own
 * (a quote, a backslash, a control character or a non-ASCII byte).  The
 * zero-byte test below has no false negatives, so a word that reads zero
 * holds none of those; a false positive only sends the word to the
 * byte-by-byte loop. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
#define HAS_ZERO(x) (((x) - ONES) & ~(x) & HIGHS)

static int word_is_special(cur p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
    uint64_t below_space = (x - ONES * 0x20) & ~x & HIGHS;
    return (below_space | HAS_ZERO(x ^ (ONES * '"')) | HAS_ZERO(x ^ (ONES * '\\')) | (x & HIGHS)) != 0;
}

/* p at the opening quote; returns the position after the closing quote. */
static cur skip_string(cur p, cur end)
{
    p++;
    while (p < end) {
        while (end - p >= 8 && !word_is_special(p))
            p += 8;
        if (p >= end) break;
        unsigned char c = *p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (end - p < 2) return NULL;
            c = p[1];
            if (c == 'u') {
                if (end - p < 6) return NULL;
                int v = 0;
                for (int i = 2; i < 6; i++) {
                    int h = hexval(p[i]);
                    if (h < 0) return NULL;
                    v = v * 16 + h;
                }
                if (v >= 0xD800 && v <= 0xDFFF) return NULL;  /* surrogates: left to the general path */
                p += 6;
                continue;
            }
            if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' && c != 't')
                return NULL;
            p += 2;
            continue;
        }
        if (c >= 0x80) {
            Py_ssize_t n = utf8_len(p, end);
            if (n == 0) return NULL;
            p += n;
            continue;
        }
        p++;
    }
    return NULL;
}

static cur skip_digits(cur p, cur end)
{
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p;
}

static cur skip_number(cur p, cur end)
{
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') p = skip_digits(p, end);
    else return NULL;
    if (p < end && *p == '.') {
        cur q = skip_digits(p + 1, end);
        if (q == p + 1) return NULL;
        p = q;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        cur q = skip_digits(p, end);
        if (q == p) return NULL;
        p = q;
    }
    return p;
}

static cur skip_literal(cur p, cur end, const char *word, Py_ssize_t n)
{
    if (end - p < n || memcmp(p, word, (size_t)n) != 0) return NULL;
    return p + n;
}

/* p at '{' or '['. */
static cur skip_container(cur p, cur end, int depth)
{
    unsigned char close = *p == '{' ? '}' : ']';
    int object = *p == '{';
    if (depth >= MAX_DEPTH) return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
        if (object) {
            if (p >= end || *p != '"') return NULL;
            p = skip_string(p, end);
            if (p == NULL) return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p = skip_ws(p + 1, end);
        }
        p = skip_value(p, end, depth + 1);
        if (p == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == close) return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* p at the first byte of a value (no leading whitespace). */
static cur skip_value(cur p, cur end, int depth)
{
    if (p >= end) return NULL;
    switch (*p) {
    case '"': return skip_string(p, end);
    case '{': case '[': return skip_container(p, end, depth);
    case 't': return skip_literal(p, end, "true", 4);
    case 'f': return skip_literal(p, end, "false", 5);
    case 'n': return skip_literal(p, end, "null", 4);
    default: return skip_number(p, end);
    }
}

/* A routing string: printable ASCII, no quote or backslash.  p after the opening quote. */
static cur plain_string(cur p, cur end)
{
    while (p < end && *p != '"') {
        if (*p < 0x20 || *p > 0x7E || *p == '\\') return NULL;
        p++;
    }
    return p < end ? p : NULL;  /* at the closing quote */
}

/* ---- the envelope ----------------------------------------------------------------------------
 *
 * One parser for every function that takes a frame apart (scan, extend, hop, scan_null,
 * extend_null) and one prefix matcher for splice_null, which re-checks a body it was handed
 * back.  The canonical envelope, with D either "NAME" or null:
 *
 *     {"routing":{"src":"S","dst":D,"ttl":N,"trace_id":"T"},"meta":{...},"payload":V}
 */

#define ROUTING_HEAD "{\"routing\":{\"src\":\""
#define DST_KEY "\",\"dst\":"     /* closes src, opens dst: 8 bytes */
#define NULL_DST DST_KEY "null,\"ttl\":"

/* The literal ``lit`` (``n`` bytes) at p: the position after it, or NULL. */
static inline Py_ALWAYS_INLINE cur expect(cur p, cur end, const char *lit, Py_ssize_t n)
{
    if (p == NULL || end - p < n || memcmp(p, lit, (size_t)n) != 0) return NULL;
    return p + n;
}

#define LIT(s) s, (Py_ssize_t)(sizeof(s) - 1)

/* The body's routing opens with ``"src":"<node>``: the position after node (at the quote that
 * closes it), or NULL. */
static inline Py_ALWAYS_INLINE cur after_src(cur start, cur end, const char *node, Py_ssize_t node_len)
{
    cur p = expect(start, end, LIT(ROUTING_HEAD));
    if (p == NULL || end - p < node_len || memcmp(p, node, (size_t)node_len) != 0) return NULL;
    return p + node_len;
}

/* Which routing.dst the caller takes: a plain string (scan, extend, hop) or null (the *_null functions). */
enum dst_form { DST_NAME, DST_NULL };

/* Where the parts of a checked frame are. */
typedef struct {
    cur dst, dst_end;         /* routing.dst without its quotes (DST_NAME); both NULL for DST_NULL */
    cur ttl, ttl_end;         /* routing.ttl's digits */
    int ttl_value;            /* 1..255 */
    cur routing_close;        /* the '}' that closes routing: the stamp goes before it */
    cur meta, meta_end;       /* the meta object */
} parts;

/* 1 if [start, end) is a canonical envelope from ``node`` with a dst of this ``form``, its parts in
 * ``out``; 0 for anything else (the general path's).  Rules: src equals node; dst and trace_id
 * printable ASCII without escapes; ttl 1..255 without leading zeros; meta an object; payload any
 * JSON value; nothing after the closing brace. */
static int parse_envelope(cur start, cur end, const char *node, Py_ssize_t node_len, enum dst_form form,
                          parts *out)
{
    cur p = after_src(start, end, node, node_len);
    if (form == DST_NULL) {
        p = expect(p, end, LIT(NULL_DST));
        out->dst = out->dst_end = NULL;
    } else {
        p = expect(p, end, LIT(DST_KEY "\""));
        if (p == NULL) return 0;
        out->dst = p;
        out->dst_end = plain_string(p, end);
        if (out->dst_end == NULL) return 0;
        p = expect(out->dst_end + 1, end, LIT(",\"ttl\":"));
    }
    if (p == NULL) return 0;
    {
        int ttl = 0, digits = 0;
        if (p < end && *p == '0') return 0;  /* ttl 0 (TTL_EXCEEDED) or a leading zero */
        out->ttl = p;
        while (p < end && *p >= '0' && *p <= '9' && digits < 4) {
            ttl = ttl * 10 + (*p - '0');
            p++;
            digits++;
        }
        if (digits == 0 || ttl > 255) return 0;
        out->ttl_end = p;
        out->ttl_value = ttl;
    }
    p = expect(p, end, LIT(",\"trace_id\":\""));
    if (p == NULL) return 0;
    p = plain_string(p, end);
    if (p == NULL) return 0;
    p++;
    if (p >= end || *p != '}') return 0;
    out->routing_close = p;
    p = expect(p + 1, end, LIT(",\"meta\":"));
    if (p == NULL || p >= end || *p != '{') return 0;
    out->meta = p;
    out->meta_end = skip_container(p, end, 1);
    p = expect(out->meta_end, end, LIT(",\"payload\":"));
    if (p == NULL) return 0;
    p = skip_value(p, end, 1);
    if (p == NULL) return 0;
    return end - p == 1 && *p == '}';
}

/* The 4-byte big-endian length header of a frame whose body is ``size`` bytes; returns where the body goes. */
static char *put_header(char *out, Py_ssize_t size)
{
    out[0] = (char)((size >> 24) & 0xFF);
    out[1] = (char)((size >> 16) & 0xFF);
    out[2] = (char)((size >> 8) & 0xFF);
    out[3] = (char)(size & 0xFF);
    return out + 4;
}

/* Write the stamped frame of a checked body (``body_len`` + ``stamp_len`` + 4 bytes) at ``out``;
 * ``close`` is routing's '}'. */
static void stamp_into(char *out, cur start, Py_ssize_t body_len, cur close, const Py_buffer *stamp)
{
    Py_ssize_t head = close - start;
    out = put_header(out, body_len + stamp->len);
    memcpy(out, start, (size_t)head);
    memcpy(out + head, stamp->buf, (size_t)stamp->len);
    memcpy(out + head + stamp->len, close, (size_t)(body_len - head));
}

/* The size of the spliced body: "null" (4 bytes) becomes the quoted dst, and the stamp goes in. */
static Py_ssize_t spliced_size(Py_ssize_t body_len, Py_ssize_t dst_len, Py_ssize_t stamp_len)
{
    return body_len - 4 + dst_len + 2 + stamp_len;
}

/* Where routing.dst's value starts in a checked body from a node whose UUID is ``node_len`` bytes. */
static Py_ssize_t dst_offset(Py_ssize_t node_len)
{
    return (Py_ssize_t)(sizeof(ROUTING_HEAD) - 1) + node_len + (Py_ssize_t)(sizeof(DST_KEY) - 1);
}

/* Write the spliced frame (header included) of a checked body at ``out``; ``null_at`` is where "null" is. */
static void splice_into(char *out, cur start, Py_ssize_t body_len, Py_ssize_t null_at, cur close,
                        const char *dst, Py_ssize_t dst_len, const Py_buffer *stamp)
{
    Py_ssize_t mid = (close - start) - (null_at + 4);  /* ,"ttl":N,"trace_id":"T" */
    out = put_header(out, spliced_size(body_len, dst_len, stamp->len));
    memcpy(out, start, (size_t)null_at);
    out += null_at;
    *out++ = '"';
    memcpy(out, dst, (size_t)dst_len);
    out += dst_len;
    *out++ = '"';
    memcpy(out, start + null_at + 4, (size_t)mid);
    out += mid;
    memcpy(out, stamp->buf, (size_t)stamp->len);
    out += stamp->len;
    memcpy(out, close, (size_t)(start + body_len - close));
}

/* ``text`` as plain printable ASCII (no quote, backslash or control character), or NULL. */
static const char *plain_dst(PyObject *text, Py_ssize_t *len)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const unsigned char *c = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (c[i] < 0x20 || c[i] > 0x7E || c[i] == '"' || c[i] == '\\') return NULL;
    *len = n;
    return (const char *)c;
}

/* Acquire the buffers of objs[0..n); on failure release what was taken and return -1. */
static int get_buffers(Py_buffer *views, PyObject *const *objs, int n)
{
    for (int i = 0; i < n; i++) {
        if (PyObject_GetBuffer(objs[i], &views[i], PyBUF_SIMPLE) < 0) {
            while (i-- > 0) PyBuffer_Release(&views[i]);
            return -1;
        }
    }
    return 0;
}

static void release_buffers(Py_buffer *views, int n)
{
    for (int i = n - 1; i >= 0; i--) PyBuffer_Release(&views[i]);
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer views[3];
    const Py_buffer *body = &views[0], *node = &views[1], *stamp = &views[2];
    PyObject *result = NULL;
    parts at;
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan(body, node, stamp) takes 3 arguments");
        return NULL;
    }
    if (get_buffers(views, args, 3) < 0) return NULL;
    cur start = (cur)body->buf;
    if (!parse_envelope(start, start + body->len, (const char *)node->buf, node->len, DST_NAME, &at)
        || body->len + stamp->len > MAX_FRAME) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    {
        PyObject *frame = PyBytes_FromStringAndSize(NULL, body->len + stamp->len + 4);
        if (frame == NULL) goto done;
        stamp_into(PyBytes_AS_STRING(frame), start, body->len, at.routing_close, stamp);
        PyObject *d = PyUnicode_DecodeASCII((const char *)at.dst, at.dst_end - at.dst, NULL);
        PyObject *m = PyBytes_FromStringAndSize((const char *)at.meta, at.meta_end - at.meta);
        if (d == NULL || m == NULL) {
            Py_XDECREF(d);
            Py_XDECREF(m);
            Py_DECREF(frame);
            goto done;
        }
        result = PyTuple_Pack(3, d, m, frame);
        Py_DECREF(d);
        Py_DECREF(m);
        Py_DECREF(frame);
    }
done:
    release_buffers(views, 3);
    return result;
}

/* ---- dst: null frames whose decision the router has cached (router/nullroute.py) ----------------
 *
 * scan_null(body, node) -> (meta, cut) | None
 *
 * The same canonical envelope as scan() but with ``"dst":null``:
 *
 *     {"routing":{"src":"S","dst":null,"ttl":N,"trace_id":"T"},"meta":{...},"payload":V}
 *
 * with the same checks (S equals ``node``, 1 <= N <= 255, T plain, meta an
 * object, V any JSON value, nothing after).  It returns meta's bytes (the
 * key of the router's decision cache) and ``cut``, the offset of the '}'
 * that closes routing, for splice_null().  Anything else returns None.
 *
 * splice_null(body, node, cut, stamp, dst) -> frame | None
 *
 * The frame the general path writes once it has decided ``dst`` for a body
 * scan_null() took: length header plus the body with ``"dst":"<dst>"``
 * instead of ``"dst":null`` and ``stamp`` inserted before routing's '}'.
 * It re-checks what it relies on (the routing prefix with ``node``, ``cut``
 * inside the body at a '}'), so a wrong ``cut`` gives None, never a read out
 * of bounds.  None too when ``dst`` is not plain printable ASCII or the frame
 * would pass the size limit (the general path answers those).
 *
 * extend_null(bodies, start, node, stamp, dst, meta, soft, hard) -> (data, count)
 *
 * extend() for these frames: the run at bodies[start:] that scan_null()
 * takes with this same meta, each spliced with ``dst`` and ``stamp``, joined.
 */

static PyObject *scan_null(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer views[2];
    const Py_buffer *body = &views[0], *node = &views[1];
    PyObject *result = NULL;
    parts at;
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan_null(body, node) takes 2 arguments");
        return NULL;
    }
    if (get_buffers(views, args, 2) < 0) return NULL;
    cur start = (cur)body->buf;
    if (!parse_envelope(start, start + body->len, (const char *)node->buf, node->len, DST_NULL, &at)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    {
        PyObject *m = PyBytes_FromStringAndSize((const char *)at.meta, at.meta_end - at.meta);
        if (m == NULL) goto done;
        result = Py_BuildValue("(Nn)", m, (Py_ssize_t)(at.routing_close - start));
    }
done:
    release_buffers(views, 2);
    return result;
}

static PyObject *splice_null(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer views[3];
    const Py_buffer *body = &views[0], *node = &views[1], *stamp = &views[2];
    PyObject *result = NULL;
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "splice_null(body, node, cut, stamp, dst) takes 5 arguments");
        return NULL;
    }
    Py_ssize_t cut = PyLong_AsSsize_t(args[2]);
    if (cut == -1 && PyErr_Occurred()) return NULL;
    if (!PyUnicode_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "splice_null: dst must be a str");
        return NULL;
    }
    PyObject *const objs[3] = {args[0], args[1], args[3]};
    if (get_buffers(views, objs, 3) < 0) return NULL;
    cur start = (cur)body->buf, end = start + body->len;
    Py_ssize_t dst_len = 0;
    const char *dst = plain_dst(args[4], &dst_len);
    /* Only the prefix is checked again (up to ``"dst":null,"ttl":``); the rest is scan_null's word
     * and ``cut``, which must at least be a '}' after that prefix and inside the body. */
    cur src_end = after_src(start, end, (const char *)node->buf, node->len);
    cur prefix_end = expect(src_end, end, LIT(NULL_DST));
    if (dst == NULL || prefix_end == NULL || cut < prefix_end - start || cut >= body->len || start[cut] != '}'
        || spliced_size(body->len, dst_len, stamp->len) > MAX_FRAME) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, spliced_size(body->len, dst_len, stamp->len) + 4);
    if (result == NULL) goto done;
    splice_into(PyBytes_AS_STRING(result), start, body->len, dst_offset(node->len), start + cut, dst, dst_len, stamp);
done:
    release_buffers(views, 3);
    return result;
}

/* extend(bodies, start, node, stamp, dst, meta, soft, hard) -> (data, count)
 *
 * The run of frames at bodies[start:] that scan() would take with this very
 * ``dst`` and ``meta``, stamped and joined: ``data`` is what the router
 * appends to the destination's buffer for all ``count`` of them.  The run
 * stops at the first frame that differs (or is not bytes), and before a frame
 * once ``soft`` bytes are reached or when the frame would take the run past
 * ``hard`` bytes -- the router's "block the producer past the high-water
 * mark" and "refuse what does not fit" decisions, which it then takes for the
 * next frame on its own.
 */
/* extend() and extend_null(): the same run, told apart by the dst ``form`` of the frames they take.
 * DST_NAME frames must carry ``dst`` and are stamped; DST_NULL frames get ``dst`` spliced in (a
 * ``dst`` that is not plain ASCII takes no frame) and the stamp. */
static PyObject *extend_run(PyObject *const *args, Py_ssize_t nargs, enum dst_form form)
{
    const char *name = form == DST_NULL ? "extend_null" : "extend";
    Py_buffer views[3];
    const Py_buffer *node = &views[0], *stamp = &views[1], *meta = &views[2];
    PyObject *result = NULL;
    Py_ssize_t *closes = NULL;  /* per frame of the run: where routing's '}' is */
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "%s(bodies, start, node, stamp, dst, meta, soft, hard) takes 8 arguments", name);
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s: bodies must be a list", name);
        return NULL;
    }
    if (!PyUnicode_Check(args[4])) {
        PyErr_Format(PyExc_TypeError, "%s: dst must be a str", name);
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[1]);
    if (first == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t soft = PyLong_AsSsize_t(args[6]);
    if (soft == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t hard = PyLong_AsSsize_t(args[7]);
    if (hard == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t dst_len = 0;
    const char *dst;
    if (form == DST_NULL)
        dst = plain_dst(args[4], &dst_len);  /* NULL: no frame is taken */
    else if ((dst = PyUnicode_AsUTF8AndSize(args[4], &dst_len)) == NULL)
        return NULL;
    PyObject *const objs[3] = {args[2], args[3], args[5]};
    if (get_buffers(views, objs, 3) < 0) return NULL;
    PyObject *bodies = args[0];
    Py_ssize_t n = PyList_GET_SIZE(bodies);
    if (first < 0) first = 0;
    Py_ssize_t count = 0, total = 0;
    if (first < n && dst != NULL) {
        closes = PyMem_New(Py_ssize_t, (size_t)(n - first));
        if (closes == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    /* First pass: how far the run goes (the list cannot change: the GIL is held and nothing here calls back). */
    for (Py_ssize_t i = first; closes != NULL && i < n && total < soft; i++) {
        PyObject *item = PyList_GET_ITEM(bodies, i);
        if (!PyBytes_CheckExact(item)) break;
        cur start = (cur)PyBytes_AS_STRING(item);
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        parts at;
        if (!parse_envelope(start, start + len, (const char *)node->buf, node->len, form, &at)) break;
        Py_ssize_t size = form == DST_NULL ? spliced_size(len, dst_len, stamp->len) : len + stamp->len;
        if (size > MAX_FRAME) break;
        if (form == DST_NAME && (at.dst_end - at.dst != dst_len || memcmp(at.dst, dst, (size_t)dst_len) != 0)) break;
        if (at.meta_end - at.meta != meta->len || memcmp(at.meta, meta->buf, (size_t)meta->len) != 0) break;
        if (size + 4 > hard - total) break;
        closes[count++] = at.routing_close - start;
        total += size + 4;
    }
    {
        PyObject *data = PyBytes_FromStringAndSize(NULL, total);
        if (data == NULL) goto done;
        char *out = PyBytes_AS_STRING(data);
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *item = PyList_GET_ITEM(bodies, first + k);
            cur start = (cur)PyBytes_AS_STRING(item);
            Py_ssize_t len = PyBytes_GET_SIZE(item);
            if (form == DST_NULL) {
                splice_into(out, start, len, dst_offset(node->len), start + closes[k], dst, dst_len, stamp);
                out += spliced_size(len, dst_len, stamp->len) + 4;
            } else {
                stamp_into(out, start, len, start + closes[k], stamp);
                out += len + stamp->len + 4;
            }
        }
        result = Py_BuildValue("(Nn)", data, count);
    }
done:
    PyMem_Free(closes);
    release_buffers(views, 3);
    return result;
}

static PyObject *extend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return extend_run(args, nargs, DST_NAME);
}

static PyObject *extend_null(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return extend_run(args, nargs, DST_NULL);
}

/* hop(bodies, start, node, dst, meta, hard, limit) -> (data, count): see the top of the file.
 *
 * parse_envelope() has found routing.ttl's digits (N in 1..255, no leading zeros); each frame is
 * written with N - 1 in their place.  A frame with N == 1 ends the run (its TTL_EXCEEDED answer
 * is the general path's).
 */
typedef struct {
    Py_ssize_t at, after;  /* where the frame's TTL digits start, and end */
    int ttl;
} ttl_mark;

static PyObject *hop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer views[2];
    const Py_buffer *node = &views[0], *meta = &views[1];
    PyObject *result = NULL;
    ttl_mark *marks = NULL;
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "hop(bodies, start, node, dst, meta, hard, limit) takes 7 arguments");
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "hop: bodies must be a list");
        return NULL;
    }
    if (!PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "hop: dst must be a str");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[1]);
    if (first == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t hard = PyLong_AsSsize_t(args[5]);
    if (hard == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t dst_len;
    const char *dst = PyUnicode_AsUTF8AndSize(args[3], &dst_len);
    if (dst == NULL) return NULL;
    PyObject *const objs[2] = {args[2], args[4]};
    if (get_buffers(views, objs, 2) < 0) return NULL;
    PyObject *bodies = args[0];
    Py_ssize_t n = PyList_GET_SIZE(bodies);
    if (first < 0) first = 0;
    if (limit > n - first) limit = n - first;
    Py_ssize_t count = 0, total = 0;
    if (limit > 0) {
        marks = PyMem_New(ttl_mark, (size_t)limit);
        if (marks == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = first; count < limit; i++) {
        PyObject *item = PyList_GET_ITEM(bodies, i);
        if (!PyBytes_CheckExact(item)) break;
        cur start = (cur)PyBytes_AS_STRING(item);
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        parts at;
        if (len > MAX_FRAME || !parse_envelope(start, start + len, (const char *)node->buf, node->len, DST_NAME, &at))
            break;
        if (at.dst_end - at.dst != dst_len || memcmp(at.dst, dst, (size_t)dst_len) != 0) break;
        if (at.meta_end - at.meta != meta->len || memcmp(at.meta, meta->buf, (size_t)meta->len) != 0) break;
        if (at.ttl_value < 2) break;
        Py_ssize_t size = len + 4 - ((at.ttl_value == 10 || at.ttl_value == 100) ? 1 : 0);
        if (size > hard - total) break;
        marks[count].at = at.ttl - start;
        marks[count].after = at.ttl_end - start;
        marks[count].ttl = at.ttl_value;
        count++;
        total += size;
    }
    {
        PyObject *data = PyBytes_FromStringAndSize(NULL, total);
        if (data == NULL) goto done;
        char *out = PyBytes_AS_STRING(data);
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *item = PyList_GET_ITEM(bodies, first + k);
            cur start = (cur)PyBytes_AS_STRING(item);
            Py_ssize_t len = PyBytes_GET_SIZE(item);
            Py_ssize_t at = marks[k].at, after = marks[k].after;
            char digits[4];
            int width = snprintf(digits, sizeof digits, "%d", marks[k].ttl - 1);
            Py_ssize_t size = len - (after - at) + width;
            out = put_header(out, size);
            memcpy(out, start, (size_t)at);
            memcpy(out + at, digits, (size_t)width);
            memcpy(out + at + width, start + after, (size_t)(len - after));
            out += size;
        }
        result = Py_BuildValue("(Nn)", data, count);
    }
done:
    PyMem_Free(marks);
    release_buffers(views, 2);
    return result;
}

static PyObject *split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "split(data, max_frame) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t max_frame = PyLong_AsSsize_t(args[1]);
    if (max_frame == -1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *bodies = PyList_New(0);
    PyObject *result = NULL;
    if (bodies == NULL) goto done;
    const unsigned char *buf = (const unsigned char *)data.buf;
    Py_ssize_t pos = 0, oversize = 0;
    while (data.len - pos >= 4) {
        Py_ssize_t size = ((Py_ssize_t)buf[pos] << 24) | ((Py_ssize_t)buf[pos + 1] << 16)
                          | ((Py_ssize_t)buf[pos + 2] << 8) | (Py_ssize_t)buf[pos + 3];
        if (size > max_frame) {
            oversize = size;
            break;
        }
        if (data.len - pos - 4 < size) break;
        PyObject *body = PyBytes_FromStringAndSize((const char *)buf + pos + 4, size);
        if (body == NULL) goto done;
        int failed = PyList_Append(bodies, body);
        Py_DECREF(body);
        if (failed) goto done;
        pos += 4 + size;
    }
    result = Py_BuildValue("(Onn)", bodies, pos, oversize);
done:
    Py_XDECREF(bodies);
    PyBuffer_Release(&data);
    return result;
}

/* ---- the sending side ------------------------------------------------- */

/* Trace ids: a per-process prefix (set by wire.py, drawn again after fork) and a 48-bit counter,
 * "<prefix><12 hex digits>", the same text as wire.py's pure-Python new_trace_id. */
#define TRACE_PREFIX_MAX 64
static char trace_prefix[TRACE_PREFIX_MAX];
static Py_ssize_t trace_prefix_len;
static uint64_t trace_counter;

static PyObject *trace_seed(PyObject *self, PyObject *arg)
{
    Py_ssize_t len;
    (void)self;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "trace_seed: the prefix must be a str");
        return NULL;
    }
    const char *text = PyUnicode_AsUTF8AndSize(arg, &len);
    if (text == NULL) return NULL;
    if (len > TRACE_PREFIX_MAX || !PyUnicode_IS_ASCII(arg)) {
        PyErr_SetString(PyExc_ValueError, "trace_seed: the prefix must be ASCII, at most 64 characters");
        return NULL;
    }
    memcpy(trace_prefix, text, (size_t)len);
    trace_prefix_len = len;
    trace_counter = 0;
    Py_RETURN_NONE;
}

static PyObject *trace_id(PyObject *self, PyObject *unused)
{
    static const char hex[] = "0123456789abcdef";
    (void)self;
    (void)unused;
    PyObject *out = PyUnicode_New(trace_prefix_len + 12, 127);
    if (out == NULL) return NULL;
    char *text = (char *)PyUnicode_1BYTE_DATA(out);
    memcpy(text, trace_prefix, (size_t)trace_prefix_len);
    uint64_t n = trace_counter++ & UINT64_C(0xFFFFFFFFFFFF);
    for (int i = 11; i >= 0; i--) {
        text[trace_prefix_len + i] = hex[n & 0xF];
        n >>= 4;
    }
    return out;
}

/* A str that JSON-encodes as itself between quotes (printable ASCII, no quote or backslash):
 * its length with the quotes, or -1 (then the caller encodes with msgspec).  None counts as "null", length 4. */
static Py_ssize_t plain_len(PyObject *text)
{
    if (text == Py_None) return 4;
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const unsigned char *c = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (c[i] < 0x20 || c[i] == '"' || c[i] == '\\') return -1;
    return n + 2;
}

static char *put_plain(char *out, PyObject *text, Py_ssize_t encoded)
{
    if (text == Py_None) {
        memcpy(out, "null", 4);
        return out + 4;
    }
    *out++ = '"';
    memcpy(out, PyUnicode_1BYTE_DATA(text), (size_t)(encoded - 2));
    out += encoded - 2;
    *out++ = '"';
    return out;
}

/* frame(head, dst, ttl_trace, trace, meta, payload) -> bytes | None
 *
 * The frame of a plain message from encoded parts, in one allocation: length header, then
 * head + json(dst) + ttl_trace + json(trace) + meta + payload + "}".  dst (a str or None) and
 * trace are written as they are when they need no escaping; otherwise it returns None and the
 * caller joins msgspec-encoded parts instead.  The size limit is the caller's to check.
 */
static PyObject *frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "frame(head, dst, ttl_trace, trace, meta, payload) takes 6 arguments");
        return NULL;
    }
    PyObject *head = args[0], *dst = args[1], *ttl_trace = args[2], *trace = args[3], *meta = args[4],
             *payload = args[5];
    if (!PyBytes_Check(head) || !PyBytes_Check(ttl_trace) || !PyBytes_Check(meta) || !PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "frame: head, ttl_trace, meta and payload must be bytes");
        return NULL;
    }
    if (trace == Py_None) Py_RETURN_NONE;
    Py_ssize_t dst_n = plain_len(dst), trace_n = plain_len(trace);
    if (dst_n < 0 || trace_n < 0) Py_RETURN_NONE;
    Py_ssize_t size = PyBytes_GET_SIZE(head) + dst_n + PyBytes_GET_SIZE(ttl_trace) + trace_n
                      + PyBytes_GET_SIZE(meta) + PyBytes_GET_SIZE(payload) + 1;
    if (size > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_OverflowError, "frame: too large");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, size + 4);
    if (result == NULL) return NULL;
    char *out = put_header(PyBytes_AS_STRING(result), size);
    memcpy(out, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
    out += PyBytes_GET_SIZE(head);
    out = put_plain(out, dst, dst_n);
    memcpy(out, PyBytes_AS_STRING(ttl_trace), (size_t)PyBytes_GET_SIZE(ttl_trace));
    out += PyBytes_GET_SIZE(ttl_trace);
    out = put_plain(out, trace, trace_n);
    memcpy(out, PyBytes_AS_STRING(meta), (size_t)PyBytes_GET_SIZE(meta));
    out += PyBytes_GET_SIZE(meta);
    memcpy(out, PyBytes_AS_STRING(payload), (size_t)PyBytes_GET_SIZE(payload));
    out += PyBytes_GET_SIZE(payload);
    *out = '}';
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(body, node, stamp) -> (dst, meta, frame) | None: the router's fast path for one frame."},
    {"extend", (PyCFunction)(void (*)(void))extend, METH_FASTCALL,
     "extend(bodies, start, node, stamp, dst, meta, soft, hard) -> (data, count): a run of frames like the first."},
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(head, dst, ttl_trace, trace, meta, payload) -> bytes | None: a plain message's frame in one piece."},
    {"trace_seed", trace_seed, METH_O, "trace_seed(prefix): start trace ids over with this prefix."},
    {"trace_id", trace_id, METH_NOARGS, "trace_id() -> str: the next trace id."},
    {"scan_null", (PyCFunction)(void (*)(void))scan_null, METH_FASTCALL,
     "scan_null(body, node) -> (meta, cut) | None: a dst:null frame the router may splice."},
    {"splice_null", (PyCFunction)(void (*)(void))splice_null, METH_FASTCALL,
     "splice_null(body, node, cut, stamp, dst) -> frame | None: a dst:null frame with its decided dst."},
    {"extend_null", (PyCFunction)(void (*)(void))extend_null, METH_FASTCALL,
     "extend_null(bodies, start, node, stamp, dst, meta, soft, hard) -> (data, count): a run of them."},
    {"hop", (PyCFunction)(void (*)(void))hop, METH_FASTCALL,
     "hop(bodies, start, node, dst, meta, hard, limit) -> (data, count): a run of frames for a link, TTL lowered."},
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(data, max_frame) -> (bodies, consumed, oversize): complete frames at the front of data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "C fast path of the Fluxbee router (see fastpath.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
