using System.Runtime.InteropServices;
using TorchSharp;

namespace AdapterServe.Modeling;

/// <summary>
/// How many threads libtorch's CPU ops use on the calling thread: its GEMMs (MKL, linked into <c>libtorch_cpu.so</c>)
/// and its own parallel loops (OpenMP: <c>at::parallel_for</c>, batched LAPACK and BLAS loops).
/// <para>
/// Both split small work over every intra-op thread, and on a small machine the split costs far more than the work: on
/// the 2-core bench machine a 24³ GEMM takes 12 µs on two threads and 2.3 µs on one, an r16 LoRA's <c>x Aᵀ</c> plus
/// <c>Bᵀ</c> accumulation for 16 tokens 33 µs against 13 µs, and a softmax over <c>[2, 4]</c> 6.1 µs against 1.0 µs
/// (libtorch starts its OpenMP team for an outer size above one). Worse, once the team's threads have gone to sleep
/// (OpenMP's passive wait, which is where the engine's threads usually are), every such start wakes them: OMoE's
/// adapter hooks took 33–35 ms per b1 step instead of 18–21 with the team asleep (scratch harness,
/// <c>OMP_WAIT_POLICY=PASSIVE</c> against the default). Adapter deltas are hundreds of such ops per step, while the base
/// model's GEMMs of the same step do gain from the threads. So the small ops run inside <see cref="OneThread"/>, which
/// sets both counts for the calling thread only: MKL's thread-local count (<c>MKL_Set_Num_Threads_Local</c>) and
/// OpenMP's <c>nthreads-var</c> of the calling thread (<c>omp_set_num_threads</c>: <c>at::get_num_threads</c> reads it,
/// so libtorch's loops run inline). Neither resizes the team: the next base GEMM costs the same (303 against 307 µs for
/// <c>[16, 576] × [576, 1536]</c>), unlike <c>torch.set_num_threads</c>, which made every base GEMM after it pay for
/// waking the team (the b16 base step got 15–20 % slower in that trial).
/// </para>
/// Where a symbol is missing (a libtorch without MKL or OpenMP), that half of <see cref="OneThread"/> does nothing.
/// </summary>
public static class CpuOpThreads
{
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int SetLocalThreads(int threads);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void SetThreads(int threads);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int GetMaxThreads();

    private static readonly SetLocalThreads? MklSetLocal = Resolve<SetLocalThreads>("MKL_Set_Num_Threads_Local");
    private static readonly GetMaxThreads? MklGetMax = Resolve<GetMaxThreads>("MKL_Get_Max_Threads");
    private static readonly SetThreads? OmpSet = Resolve<SetThreads>("omp_set_num_threads");
    private static readonly GetMaxThreads? OmpGetMax = Resolve<GetMaxThreads>("omp_get_max_threads");

    /// <summary>True when the loaded libtorch exposes MKL's thread-local setting.</summary>
    public static bool GemmAvailable => MklSetLocal is not null;

    /// <summary>True when the loaded libtorch runs its loops on OpenMP and exposes its per-thread setting.</summary>
    public static bool LoopsAvailable => OmpSet is not null && OmpGetMax is not null;

    /// <summary>
    /// MKL GEMMs and libtorch's OpenMP loops issued by the calling thread run on one thread until the scope is disposed
    /// (on the same thread).
    /// </summary>
    public static Scope OneThread()
    {
        int? loops = null;
        if (OmpSet is not null && OmpGetMax is not null)
        {
            loops = OmpGetMax();
            OmpSet(1);
        }
        return new Scope(MklSetLocal?.Invoke(1), loops);
    }

    /// <summary>Threads MKL would use for a GEMM issued by the calling thread now; null without MKL.</summary>
    public static int? GemmThreads => MklGetMax?.Invoke();

    /// <summary>Threads libtorch's loops would use when started from the calling thread now; null without OpenMP.</summary>
    public static int? LoopThreads => OmpGetMax?.Invoke();

    /// <summary>Restores the calling thread's previous settings (MKL: 0 = the process-wide one) when disposed.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly int? _gemm;
        private readonly int? _loops;

        internal Scope(int? gemm, int? loops)
        {
            _gemm = gemm;
            _loops = loops;
        }

        public void Dispose()
        {
            if (_gemm is { } gemm) MklSetLocal!(gemm);
            if (_loops is { } loops) OmpSet!(loops);
        }
    }

    private static T? Resolve<T>(string name) where T : Delegate
    {
        // TorchSharp loads libtorch on first use; dlopen by soname then returns the library already in the process, and
        // dlsym on it also searches its dependencies (OpenMP's runtime). MKL's C entry points (mixed case) take their
        // arguments by value; the lower-case exports are the Fortran ones.
        _ = torch.get_num_threads();
        if (!NativeLibrary.TryLoad("libtorch_cpu.so", out var library) && !NativeLibrary.TryLoad("torch_cpu", out library)) return null;
        return NativeLibrary.TryGetExport(library, name, out var export) ? Marshal.GetDelegateForFunctionPointer<T>(export) : null;
    }
}
