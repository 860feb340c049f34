/* Peak multiply-accumulate rate of this CPU's vector units (benchmarks/cpu_peak.py compiles and runs it).
 *
 *   cpu_peak KIND ITERATIONS REPEATS     KIND: fp32 (FMA), bf16 (VDPBF16PS), int8 (VPDPBUSD, VNNI)
 *
 * Every OpenMP thread runs ITERATIONS rounds of ACC independent 512-bit multiply-accumulates (enough
 * independent chains to hide the instructions' latency), with no memory traffic; prints
 * "KIND THREADS MACS_PER_SECOND" for the fastest of REPEATS runs. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACC 16

static double fp32(long iterations) {
    __m512 acc[ACC], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < ACC; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iterations; i++)
#pragma GCC unroll 16
        for (int k = 0; k < ACC; k++) acc[k] = _mm512_fmadd_ps(acc[k], b, c);
    double sink = 0;
    for (int k = 0; k < ACC; k++) sink += _mm512_reduce_add_ps(acc[k]);
    return sink;
}

static double bf16(long iterations) {
    __m512 acc[ACC];
    __m512bh one = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 in bfloat16 */
    for (int k = 0; k < ACC; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iterations; i++)
#pragma GCC unroll 16
        for (int k = 0; k < ACC; k++) acc[k] = _mm512_dpbf16_ps(acc[k], one, one);
    double sink = 0;
    for (int k = 0; k < ACC; k++) sink += _mm512_reduce_add_ps(acc[k]);
    return sink;
}

static double int8(long iterations) {
    __m512i acc[ACC], one = _mm512_set1_epi8(1);
    for (int k = 0; k < ACC; k++) acc[k] = _mm512_set1_epi32(k);
    for (long i = 0; i < iterations; i++)
#pragma GCC unroll 16
        for (int k = 0; k < ACC; k++) acc[k] = _mm512_dpbusd_epi32(acc[k], one, one);
    double sink = 0;
    for (int k = 0; k < ACC; k++) sink += _mm512_reduce_add_epi32(acc[k]);
    return sink;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s fp32|bf16|int8 ITERATIONS REPEATS\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1];
    long iterations = atol(argv[2]);
    int repeats = atoi(argv[3]);
    double (*kernel)(long) = !strcmp(kind, "fp32") ? fp32 : !strcmp(kind, "bf16") ? bf16 : !strcmp(kind, "int8") ? int8 : NULL;
    if (kernel == NULL || iterations <= 0 || repeats <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    int lanes = !strcmp(kind, "fp32") ? 16 : !strcmp(kind, "bf16") ? 32 : 64; /* MACs per instruction */
    double best = 1e300, sink = 0;
    for (int r = 0; r < repeats; r++) {
        double start = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
        sink += kernel(iterations);
        double seconds = omp_get_wtime() - start;
        if (seconds < best) best = seconds;
    }
    int threads = omp_get_max_threads();
    printf("%s %d %.6e\n", kind, threads, (double)iterations * ACC * lanes * threads / best);
    fprintf(stderr, "(checksum %g)\n", sink); /* keeps the loops from being optimised away */
    return 0;
}
