using AdapterServe.Modeling;

namespace AdapterServe.Tests.Modeling;

public class CpuOpThreadsTests
{
    private static (int Gemm, int Loops) OnFreshThread()
    {
        (int, int) threads = (-1, -1);
        var t = new Thread(() => threads = (CpuOpThreads.GemmThreads ?? -1, CpuOpThreads.LoopThreads ?? -1));
        t.Start();
        t.Join();
        return threads;
    }

    [Fact]
    public void OneThread_limits_the_calling_threads_gemms_and_loops_to_one_thread_and_restores_them()
    {
        Assert.True(CpuOpThreads.GemmAvailable, "the CPU libtorch links MKL and exports MKL_Set_Num_Threads_Local");
        Assert.True(CpuOpThreads.LoopsAvailable, "the CPU libtorch runs its loops on OpenMP and exports omp_set_num_threads");
        var before = (CpuOpThreads.GemmThreads!.Value, CpuOpThreads.LoopThreads!.Value);
        var elsewhere = OnFreshThread();
        Assert.True(elsewhere.Gemm >= 1 && elsewhere.Loops >= 1, $"a fresh thread reports {elsewhere}");
        Assert.Equal(TorchSharp.torch.get_num_threads(), before.Item2);       // what at::get_num_threads reads on this thread

        using (CpuOpThreads.OneThread())
        {
            Assert.Equal((1, 1), (CpuOpThreads.GemmThreads, CpuOpThreads.LoopThreads));
            Assert.Equal(1, TorchSharp.torch.get_num_threads());               // libtorch's loops run inline on this thread
            using (CpuOpThreads.OneThread()) Assert.Equal((1, 1), (CpuOpThreads.GemmThreads, CpuOpThreads.LoopThreads));
            Assert.Equal((1, 1), (CpuOpThreads.GemmThreads, CpuOpThreads.LoopThreads)); // the inner scope restored the outer one's setting
            Assert.Equal(elsewhere, OnFreshThread());                         // other threads keep theirs
        }
        Assert.Equal(before, (CpuOpThreads.GemmThreads!.Value, CpuOpThreads.LoopThreads!.Value));
    }
}
