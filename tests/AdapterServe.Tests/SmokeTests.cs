using static TorchSharp.torch;

namespace AdapterServe.Tests;

public class SmokeTests
{
    [Fact]
    public void TorchSharp_native_library_loads()
    {
        using var t = ones(2, 3);
        Assert.Equal(6f, t.sum().item<float>());
    }
}
