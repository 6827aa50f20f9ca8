# CPU image. For a GPU image build with --build-arg TORCH_BACKEND=cuda on a feed that has TorchSharp-cuda-linux.
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
ARG TORCH_BACKEND=cpu
# The C compiler builds libadapterserve_native.so (the native S'MoRE tree on the CPU; build/AdapterServeNative.targets).
RUN command -v cc >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
COPY . .
RUN dotnet publish src/AdapterServe.Server -c Release -o /app -p:TorchSharpBackend=${TORCH_BACKEND}

FROM mcr.microsoft.com/dotnet/aspnet:10.0
WORKDIR /app
COPY --from=build /app .
ENV ADAPTERSERVE_Server__Host=0.0.0.0 \
    ADAPTERSERVE_Adapters__DataDirectory=/data
VOLUME ["/data", "/models"]
EXPOSE 8000
ENTRYPOINT ["dotnet", "AdapterServe.Server.dll"]
