# Shared part of the cross toolchain files: a Debian multiarch cross build.
# The target's libraries are Debian packages of that architecture installed
# beside the host's (`dpkg --add-architecture`, `libgrpc++-dev:<arch>`), so
# headers are in /usr/include, libraries and CMake/pkg-config files in
# /usr/lib/<triplet>. protoc and grpc_cpp_plugin are the host's: code
# generation runs on the build machine. tools/cross/build-agent.sh sets
# this up and builds with it.
#
# The including file sets TUNNEL_CROSS_TRIPLET and CMAKE_SYSTEM_PROCESSOR.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER ${TUNNEL_CROSS_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${TUNNEL_CROSS_TRIPLET}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${TUNNEL_CROSS_TRIPLET})

# Look for the target's packages only under the target's multiarch
# directories, never the host's; programs (protoc, the gRPC plugin) are the
# host's.
set(CMAKE_FIND_ROOT_PATH /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_PREFIX_PATH /usr/lib/${TUNNEL_CROSS_TRIPLET}/cmake)

# Debian's pkg-config wrapper for the triplet reads the target's .pc files.
set(PKG_CONFIG_EXECUTABLE /usr/bin/${TUNNEL_CROSS_TRIPLET}-pkg-config)

# Emulator for running target binaries on the build machine (ctest, the
# cross end-to-end test). -L /: the target's libraries and loader are where
# multiarch put them.
find_program(TUNNEL_QEMU qemu-${CMAKE_SYSTEM_PROCESSOR}-static)
if(TUNNEL_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TUNNEL_QEMU} -L /)
endif()
