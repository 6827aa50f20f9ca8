using AdapterServe.Modeling;

namespace AdapterServe.Tests.Modeling;

public class CpuGemmThreadsTests
{
    private static int OnFreshThread()
    {
        int threads = -1;
        var t = new Thread(() => threads = CpuGemmThreads.Current ?? -1);
        t.Start();
        t.Join();
        return threads;
    }

    [Fact]
    public void OneThread_limits_the_calling_threads_gemms_to_one_thread_and_restores_them()
    {
        Assert.True(CpuGemmThreads.Available, "the CPU libtorch links MKL and exports MKL_Set_Num_Threads_Local");
        int before = CpuGemmThreads.Current!.Value;
        int elsewhere = OnFreshThread();
        Assert.True(elsewhere >= 1, $"MKL reports {elsewhere} threads on a fresh thread");

        using (CpuGemmThreads.OneThread())
        {
            Assert.Equal(1, CpuGemmThreads.Current);
            using (CpuGemmThreads.OneThread()) Assert.Equal(1, CpuGemmThreads.Current);
            Assert.Equal(1, CpuGemmThreads.Current);                  // the inner scope restored the outer one's setting
            Assert.Equal(elsewhere, OnFreshThread());                // other threads keep theirs
        }
        Assert.Equal(before, CpuGemmThreads.Current);
    }
}
