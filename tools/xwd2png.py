import struct, zlib, sys
d=open(sys.argv[1],'rb').read()
hdr=struct.unpack('>25I', d[:100])
header_size, version, fmt, depth, w, h = hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]
bpp = hdr[11]; bpl = hdr[12]; ncolors = hdr[19]
off = header_size + ncolors*12
byte_order = hdr[7]
rows=[]
for y in range(h):
    row=d[off+y*bpl: off+y*bpl+w*(bpp//8)]
    out=bytearray()
    for x in range(w):
        px=row[x*4:x*4+4]
        if byte_order==0: b,g,r=px[0],px[1],px[2]
        else: r,g,b=px[1],px[2],px[3]
        out+=bytes((r,g,b))
    rows.append(b'\x00'+bytes(out))
raw=b''.join(rows)
def chunk(t,data): return struct.pack('>I',len(data))+t+data+struct.pack('>I',zlib.crc32(t+data)&0xffffffff)
png=b'\x89PNG\r\n\x1a\n'+chunk(b'IHDR',struct.pack('>IIBBBBB',w,h,8,2,0,0,0))+chunk(b'IDAT',zlib.compress(raw,6))+chunk(b'IEND',b'')
open(sys.argv[2],'wb').write(png)
print(w,h,bpp,byte_order)
