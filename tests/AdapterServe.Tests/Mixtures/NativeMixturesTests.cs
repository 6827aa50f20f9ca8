using AdapterServe.Adapters.Kinds.Mixtures;

namespace AdapterServe.Tests.Mixtures;

/// <summary>The mixture kinds' native library (build/AdapterServeNative.targets, <see cref="NativeMixtures"/>).</summary>
public sealed class NativeMixturesTests
{
    [Fact]
    public void The_native_library_is_built_with_the_project_where_there_is_a_C_compiler()
    {
        // Guards the build against silently leaving the library out: where `cc` exists the library must be next to the
        // assemblies and load, or every test of the native forms (S'MoRE tree, OMoE mixture) would skip.
        bool compiler = Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(dir => File.Exists(Path.Combine(dir, "cc")));
        if (!compiler) Assert.Skip("no C compiler (cc) on PATH: the native mixture code is not built here");
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "libadapterserve_native.so")), "libadapterserve_native.so is not next to the test assemblies");
        Assert.True(NativeMixtures.Available, "libadapterserve_native.so is there but does not load");
    }

    [Fact]
    public void Asking_for_the_native_form_where_it_was_not_built_is_an_error_and_auto_falls_back_to_tensors()
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        var cpu = TorchSharp.torch.zeros(1);
        Assert.False(NativeMixtures.Runs(MixtureForm.Tensors, cpu, rows: 1, maxRows: 32));
        Assert.False(NativeMixtures.Runs(MixtureForm.Auto, cpu, rows: 33, maxRows: 32));         // more rows than the native form takes
        if (NativeMixtures.Available)
        {
            Assert.True(NativeMixtures.Runs(MixtureForm.Auto, cpu, rows: 32, maxRows: 32));
            Assert.True(NativeMixtures.Runs(MixtureForm.Native, cpu, rows: 1000, maxRows: 32));   // asked for: whatever the rows
            using (NativeMixtures.UseForm(MixtureForm.Tensors))
                Assert.False(NativeMixtures.Runs(MixtureForm.Auto, cpu, rows: 1, maxRows: 32));   // the thread's form decides Auto
            Assert.True(NativeMixtures.Runs(MixtureForm.Auto, cpu, rows: 1, maxRows: 32));        // and is restored
        }
        else
        {
            Assert.False(NativeMixtures.Runs(MixtureForm.Auto, cpu, rows: 1, maxRows: 32));
            Assert.Throws<InvalidOperationException>(() => NativeMixtures.Runs(MixtureForm.Native, cpu, rows: 1, maxRows: 32));
        }
    }
}
