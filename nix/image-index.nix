# buildImageIndex: one multi-platform image from images built for several platforms (each a
# buildImage with its own `arch`, and `os`/`variant` where needed). It writes only the index
# description, {"version": 1, "images": [<image JSON>...], "tag": ...}: the mount reads each
# image's platform from its own description, so nothing is read at evaluation time (no
# import-from-derivation) and no image needs its platform's CPU to be built or mounted.
# Two images for one platform, an entry that is not an image description, or an index inside
# an index are refused by the mount with one log line naming the file and the reason.
{ writeJSON }:
{ name, tag ? null, images }:
if images == [ ] then throw "nixoci.buildImageIndex ${name}: images is empty"
else
  writeJSON "${name}-index.json" (builtins.toJSON ({
    version = 1;
    images = map toString images;
  } // (if tag == null then { } else { inherit tag; })))
  // { inherit images; }
