/* The optional compiled accelerator: RFC 6455 unmasking (section 5.3).
 *
 * apply_mask(data, mask) -> bytes: ``data`` (any contiguous bytes-like object) XORed with
 * the repeated 4-byte ``mask``, read straight from the caller's buffer into the result
 * (one copy). spoc_sockets._fastpath uses it when it is importable; setup.py builds it
 * unless SPOC_SOCKETS_NO_SPEEDUPS=1, and a failed build leaves the pure-Python masker.
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

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot speedups_slots[] = {
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
    .m_doc = "The compiled masker of spoc_sockets (optional).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
