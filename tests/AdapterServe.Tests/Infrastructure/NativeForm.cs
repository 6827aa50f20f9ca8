using AdapterServe.Adapters.Kinds.Mixtures;

namespace AdapterServe.Tests.Infrastructure;

/// <summary>The mixture kinds' two forms in tests: the tensor form always runs; the native one needs the library the build makes with a C compiler.</summary>
public static class NativeForm
{
    /// <summary>Both forms, for theories over them.</summary>
    public static TheoryData<MixtureForm> Both => [MixtureForm.Tensors, MixtureForm.Native];

    /// <summary>Every one of <paramref name="cases"/> in both forms (tensor form first), for theories over a case and a form.</summary>
    public static TheoryData<int, MixtureForm> Each(int[] cases)
    {
        var data = new TheoryData<int, MixtureForm>();
        foreach (var form in new[] { MixtureForm.Tensors, MixtureForm.Native })
            foreach (int c in cases) data.Add(c, form);
        return data;
    }

    /// <summary>
    /// <see cref="Require"/>, then <paramref name="form"/> for every mixture run on this thread until disposed (the
    /// per-group, sibling and slot paths alike: <see cref="NativeMixtures.UseForm"/>).
    /// </summary>
    public static IDisposable Use(MixtureForm form)
    {
        Require(form);
        return NativeMixtures.UseForm(form);
    }

    /// <summary>Skips a test of the native form where the library was not built (no C compiler when the tests were built).</summary>
    public static void Require(MixtureForm form)
    {
        if (form == MixtureForm.Native && !NativeMixtures.Available)
            Assert.Skip("libadapterserve_native.so was not built (no C compiler at build time; .ci/run installs gcc): the native form is not tested here");
    }
}
