/* The optional compiled accelerator: RFC 6455 unmasking (section 5.3).
 *
 * apply_mask(data, mask) -> bytes: ``data`` (any contiguous bytes-like object) XORed with
 * the repeated 4-byte ``mask``, read straight from the caller's buffer into the result
 * (one copy).
 *
 * Assembler(length, mask): one masked payload of ``length`` bytes arriving in pieces.
 * feed(piece) unmasks each piece straight into the message (a bytes object made at the
 * start and never shown before it is full) and returns how many bytes are still
 * missing; take() returns the message once it is full. So a large frame costs one
 * allocation of its size and no gathering buffer.
 *
 * spoc_sockets._fastpath uses them when they are importable; setup.py builds them unless
 * SPOC_SOCKETS_NO_SPEEDUPS=1, and a failed build leaves the pure-Python ones.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define MASK_SIZE 4

#if defined(__GNUC__) || defined(__clang__)
/* 16 bytes at a time, in the vector registers the target has (SSE2, NEON, ...). */
typedef uint8_t block16 __attribute__((vector_size(16)));
#define BLOCK 16
#else
typedef uint64_t block16;
#define BLOCK 8
#endif

static void
xor_mask(const uint8_t *src, uint8_t *dst, Py_ssize_t n, const uint8_t mask[MASK_SIZE])
{
    uint8_t pattern[BLOCK];
    block16 key, word;
    Py_ssize_t i = 0;

    for (int j = 0; j < BLOCK; j++) {
        pattern[j] = mask[j & 3];
    }
    memcpy(&key, pattern, BLOCK);
    for (; i + BLOCK <= n; i += BLOCK) {
        memcpy(&word, src + i, BLOCK);
        word ^= key;
        memcpy(dst + i, &word, BLOCK);
    }
    for (; i < n; i++) {  /* i is a multiple of 4 here, so the lanes line up */
        dst[i] = src[i] ^ mask[i & 3];
    }
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "apply_mask() takes 2 arguments (data, mask), not %zd", nargs);
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != MASK_SIZE) {
        PyErr_Format(PyExc_ValueError, "the mask is 4 bytes, not %zd", mask.len);
    }
    else {
        result = PyBytes_FromStringAndSize(NULL, data.len);
        if (result != NULL) {
            xor_mask((const uint8_t *)data.buf, (uint8_t *)PyBytes_AS_STRING(result),
                     data.len, (const uint8_t *)mask.buf);
        }
    }
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(apply_mask_doc,
"apply_mask(data, mask, /) -> bytes\n\n"
"data XORed with the repeated 4-byte mask (RFC 6455 section 5.3).");

/* -- Assembler ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *message;  /* the bytes being filled; NULL once taken */
    Py_ssize_t length;  /* its size */
    Py_ssize_t filled;  /* how many of its bytes came */
    uint8_t mask[MASK_SIZE];
} Assembler;

static PyObject *
assembler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t length;
    Py_buffer mask;
    Assembler *self;

    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Assembler() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "ny*:Assembler", &length, &mask)) {
        return NULL;
    }
    if (mask.len != MASK_SIZE || length < 0) {
        if (mask.len != MASK_SIZE) {
            PyErr_Format(PyExc_ValueError, "the mask is 4 bytes, not %zd", mask.len);
        }
        else {
            PyErr_Format(PyExc_ValueError, "a length is 0 or more, not %zd", length);
        }
        PyBuffer_Release(&mask);
        return NULL;
    }
    self = (Assembler *)type->tp_alloc(type, 0);
    if (self != NULL) {
        memcpy(self->mask, mask.buf, MASK_SIZE);
        self->length = length;
        self->message = PyBytes_FromStringAndSize(NULL, length);
        if (self->message == NULL) {
            Py_CLEAR(self);
        }
    }
    PyBuffer_Release(&mask);
    return (PyObject *)self;
}

static void
assembler_dealloc(Assembler *self)
{
    PyTypeObject *type = Py_TYPE(self);

    Py_XDECREF(self->message);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
assembler_feed(Assembler *self, PyObject *piece)
{
    Py_buffer data;
    uint8_t mask[MASK_SIZE];

    if (PyObject_GetBuffer(piece, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (self->message == NULL) {  /* checked after GetBuffer, which may run Python code */
        PyErr_SetString(PyExc_ValueError, "the message was taken");
        PyBuffer_Release(&data);
        return NULL;
    }
    if (data.len > self->length - self->filled) {
        PyErr_Format(PyExc_ValueError, "%zd bytes given where %zd are missing", data.len,
                     self->length - self->filled);
        PyBuffer_Release(&data);
        return NULL;
    }
    for (int j = 0; j < MASK_SIZE; j++) {  /* the key as it falls on this piece */
        mask[j] = self->mask[(self->filled + j) & 3];
    }
    xor_mask((const uint8_t *)data.buf,
             (uint8_t *)PyBytes_AS_STRING(self->message) + self->filled, data.len, mask);
    self->filled += data.len;
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(self->length - self->filled);
}

static PyObject *
assembler_take(Assembler *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *message = self->message;

    if (message == NULL) {
        PyErr_SetString(PyExc_ValueError, "the message was taken");
        return NULL;
    }
    if (self->filled != self->length) {
        PyErr_Format(PyExc_ValueError, "the message is not full: %zd of %zd bytes",
                     self->filled, self->length);
        return NULL;
    }
    self->message = NULL;
    return message;
}

static PyMethodDef assembler_methods[] = {
    {"feed", (PyCFunction)assembler_feed, METH_O,
     "feed(piece, /) -> int\n\nUnmask the next piece of the payload into the message; "
     "the bytes still missing."},
    {"take", (PyCFunction)assembler_take, METH_NOARGS,
     "take() -> bytes\n\nThe message, once full (once only)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot assembler_slots[] = {
    {Py_tp_new, assembler_new},
    {Py_tp_dealloc, assembler_dealloc},
    {Py_tp_methods, assembler_methods},
    {Py_tp_doc, "Assembler(length, mask, /)\n\n"
                "One masked payload of length bytes, unmasked piece by piece into its "
                "message."},
    {0, NULL},
};

static PyType_Spec assembler_spec = {
    .name = "spoc_sockets._speedups.Assembler",
    .basicsize = sizeof(Assembler),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = assembler_slots,
};

static int
speedups_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &assembler_spec, NULL);

    if (type == NULL) {
        return -1;
    }
    int added = PyModule_AddObjectRef(module, "Assembler", type);

    Py_DECREF(type);
    return added;
}

/* -- the module --------------------------------------------------------------------- */

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "spoc_sockets._speedups",
    .m_doc = "The compiled masker and assembler of spoc_sockets (optional).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
