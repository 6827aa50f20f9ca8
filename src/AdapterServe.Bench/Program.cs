using AdapterServe.Bench;

using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
return await BenchProgram.RunAsync(args, Console.Out, Console.Error, cancel.Token);
